"""The jobgate Python client: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), one
API over one sans-I/O core (:mod:`jobgate.client.core`).

```python
from jobgate.client import Client

with Client() as jobgate:  # JOBGATE_URL, JOBGATE_API_KEY
    job = jobgate.submit("extract", {"url": "https://example.com"})
    job = jobgate.wait(job.id, timeout=120)
    print(jobgate.result(job.id))
```

The models are the gateway's own (:mod:`gateway.web.models`); ``Job`` is ``JobOut``.
"""

from gateway.web.models import (
    EndEventData,
    JobEventData,
    JobList,
    JobOut,
    Problem,
    ProviderOut,
    RecordsEventData,
    ResultOut,
    StateEventData,
)
from jobgate.client.aio import AsyncClient
from jobgate.client.core import ResultStream
from jobgate.client.download import Download
from jobgate.client.errors import (
    BadRequest,
    Conflict,
    DownloadError,
    Forbidden,
    GatewayUnreachable,
    Gone,
    JobgateError,
    NotFound,
    ProblemError,
    RateLimited,
    StreamError,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
    Unprocessable,
    UpstreamError,
    WaitTimeout,
)
from jobgate.client.events import Event
from jobgate.client.sync import Client

Job = JobOut

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "Download",
    "DownloadError",
    "EndEventData",
    "Event",
    "Forbidden",
    "GatewayUnreachable",
    "Gone",
    "Job",
    "JobEventData",
    "JobList",
    "JobOut",
    "JobgateError",
    "NotFound",
    "Problem",
    "ProblemError",
    "ProviderOut",
    "RateLimited",
    "RecordsEventData",
    "ResultOut",
    "ResultStream",
    "StateEventData",
    "StreamError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedAnswer",
    "Unprocessable",
    "UpstreamError",
    "WaitTimeout",
]
