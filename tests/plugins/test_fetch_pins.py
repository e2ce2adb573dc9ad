"""scripts/fetch_{ort,trt}_headers.sh check the SHA-256 of what they download against a pin, and
record it beside the headers (DEVELOPERS.md, "Third-party headers"). Network-free: `--verify FILE`
runs the check alone, `--check` the decision whether .deps is up to date or must be refetched."""
import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


class Fetcher:
    def __init__(self, name, pkg_var, sha_var, default_var, fake_pkg, folder):
        self.name, self.pkg_var, self.sha_var, self.fake_pkg, self.folder = name, pkg_var, sha_var, fake_pkg, folder
        self.path = SCRIPTS / f"{name}.sh"
        self.text = self.path.read_text()
        self.default_pkg = re.search(rf"^{default_var}=(\S+)$", self.text, re.M).group(1)
        self.pin = re.search(r"^default_sha256=(\S+)", self.text, re.M).group(1)
        self.required = re.search(r"^required=\(([^)]*)\)", self.text, re.M).group(1).split()

    def run(self, *args, deps, **env):
        full = {k: v for k, v in os.environ.items() if k not in (self.pkg_var, self.sha_var)}
        full.update(DEFMAMBA_DEPS_DIR=str(deps), **env)
        return subprocess.run(["bash", str(self.path), *args], env=full, capture_output=True, text=True, timeout=30)


FETCHERS = [
    Fetcher("fetch_ort_headers", "ORT_NPM_PACKAGE", "ORT_NPM_SHA256", "default_pkg", "fake-headers@1.0.0", "onnxruntime"),
    Fetcher("fetch_trt_headers", "TRT_HEADERS_PIP_SPEC", "TRT_HEADERS_SHA256", "default_spec", "fake-headers==1.0.0",
            "tensorrt"),
]


@pytest.fixture(params=FETCHERS, ids=lambda f: f.name)
def fetcher(request):
    return request.param


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mismatch_line(f, file, actual, expected, pkg):
    return (f"{f.name}: error: {file} has SHA-256 {actual}, expected {expected} (pinned for {pkg}): the download is "
            f"corrupt or the package changed; delete it and retry, or pin the new hash with {f.sha_var}=...")


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "archive.tgz"
    path.write_bytes(b"\x1f\x8b pretend archive\n" * 100)
    return path


def test_the_pins_are_sha256_beside_the_version(fetcher):
    assert re.fullmatch(r"[0-9a-f]{64}", fetcher.pin)
    assert fetcher.default_pkg in ("com.github.asus4.onnxruntime@0.4.9", "kernel-lens==2.0.1")
    # in the download path: the archive is verified before anything is installed, recorded after
    text = fetcher.text
    assert text.index("verify_or_check_only") < text.index("mktemp")
    assert text.index('verify_sha256 "') < text.index("install_headers ") < text.index("write_stamp")


def test_the_right_hash_passes(fetcher, archive, tmp_path):
    good = sha256(archive)
    for pin in (good, good.upper()):
        r = fetcher.run("--verify", str(archive), deps=tmp_path, **{fetcher.pkg_var: fetcher.fake_pkg,
                                                                    fetcher.sha_var: pin})
        assert r.returncode == 0, r.stderr
        assert r.stderr == "" and good in r.stdout


def test_a_tampered_file_fails_with_one_line(fetcher, archive, tmp_path):
    good = sha256(archive)
    data = bytearray(archive.read_bytes())
    data[50] ^= 1
    archive.write_bytes(bytes(data))
    r = fetcher.run("--verify", str(archive), deps=tmp_path, **{fetcher.pkg_var: fetcher.fake_pkg, fetcher.sha_var: good})
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [mismatch_line(fetcher, archive, sha256(archive), good, fetcher.fake_pkg)]


def test_the_default_package_is_checked_against_its_pin(fetcher, archive, tmp_path):
    r = fetcher.run("--verify", str(archive), deps=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [mismatch_line(fetcher, archive, sha256(archive), fetcher.pin, fetcher.default_pkg)]
    # naming the default package explicitly keeps its pin
    r = fetcher.run("--verify", str(archive), deps=tmp_path, **{fetcher.pkg_var: fetcher.default_pkg})
    assert r.returncode == 1 and f"expected {fetcher.pin} " in r.stderr


def test_an_override_needs_its_own_hash_or_skip(fetcher, archive, tmp_path):
    r = fetcher.run("--verify", str(archive), deps=tmp_path, **{fetcher.pkg_var: fetcher.fake_pkg})
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert f"{fetcher.pkg_var}={fetcher.fake_pkg} needs its own pin" in r.stderr and f"{fetcher.sha_var}=skip" in r.stderr
    r = fetcher.run("--verify", str(archive), deps=tmp_path, **{fetcher.pkg_var: fetcher.fake_pkg, fetcher.sha_var: "skip"})
    assert r.returncode == 0
    assert r.stderr.splitlines() == [f"{fetcher.name}: warning: {archive} is not checked against a pin "
                                     f"({fetcher.sha_var}=skip); its SHA-256 is {sha256(archive)}"]
    for bad in ("0" * 63, "g" * 64, "yes"):
        r = fetcher.run("--verify", str(archive), deps=tmp_path, **{fetcher.sha_var: bad})
        assert r.returncode == 1 and "neither a SHA-256" in r.stderr and fetcher.sha_var in r.stderr


def test_the_record_beside_the_headers_decides_the_refetch(fetcher, tmp_path):
    include = tmp_path / fetcher.folder / "include"
    include.mkdir(parents=True)
    for h in fetcher.required:
        (include / h).write_text("")
    stamp = tmp_path / fetcher.folder / ".sha256"

    def check(**env):
        return fetcher.run("--check", deps=tmp_path, **env)

    r = check()  # headers from before the pins: no record
    assert r.returncode == 1 and "needs a refetch: no record" in r.stdout
    stamp.write_text(f"{fetcher.pin}  {fetcher.default_pkg}\n")
    assert check().returncode == 0
    r = fetcher.run(deps=tmp_path)  # the fast path, no download
    assert r.returncode == 0 and "already present" in r.stdout
    other = "ab" * 32
    r = check(**{fetcher.sha_var: other})  # the pin changed
    assert r.returncode == 1 and f"the pin is {other}" in r.stdout and fetcher.pin in r.stdout
    r = check(**{fetcher.pkg_var: fetcher.fake_pkg, fetcher.sha_var: fetcher.pin})  # another package
    assert r.returncode == 1 and "needs a refetch" in r.stdout
    assert check(**{fetcher.pkg_var: fetcher.default_pkg, fetcher.sha_var: "skip"}).returncode == 0
    (include / fetcher.required[-1]).unlink()
    r = check()
    assert r.returncode == 1 and "needs a fetch" in r.stdout
