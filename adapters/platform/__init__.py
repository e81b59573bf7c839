"""The generic platform Jobs API: adopt-by-id jobs in a ``{data, error}`` envelope, with rerun."""
