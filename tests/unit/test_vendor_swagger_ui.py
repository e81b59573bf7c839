"""``tools/vendor_swagger_ui.py``: the bytes /docs serves are the pinned package's, or none."""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "vendor_swagger_ui.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vendor_swagger_ui", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_tarball_that_is_not_the_pinned_one_is_refused() -> None:
    vendor = load()
    with pytest.raises(SystemExit, match="does not match its pinned integrity"):
        vendor.verify(b"not swagger-ui")


def test_the_kept_files_are_unpacked_and_stamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vendor = load()
    files = {name: f"{name} bytes".encode() for name in vendor.FILES}
    blob = tarball({**files, "index.html": b"<!doctype html>", "package.json": b"{}"})
    vendor.unpack(blob, tmp_path)
    for name, data in files.items():
        assert (tmp_path / name).read_bytes() == data
    assert not (tmp_path / "index.html").exists()  # only what /docs serves
    monkeypatch.setattr(vendor, "TARGET", tmp_path)
    assert vendor.installed()
    (tmp_path / vendor.FILES[0]).unlink()
    assert not vendor.installed()


def test_a_package_missing_a_file_is_refused(tmp_path: Path) -> None:
    vendor = load()
    with pytest.raises(SystemExit, match="missing from the package"):
        vendor.unpack(tarball({"LICENSE": b"x"}), tmp_path)
