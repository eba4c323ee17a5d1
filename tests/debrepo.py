"""An apt repository standing in for apt.opensips.org, for the package-install e2e test.

Debian packages with the official names and split (packaging/debian/rules of each release: module ->
package) are built from a release tarball with the Debian layout (binary /usr/sbin/opensips, cfg in
/etc/opensips, modules in /usr/lib/x86_64-linux-gnu/opensips/modules/, schemas in /usr/share/opensips),
only with the modules sipops' roles load. The .debs are cached under /var/cache/sipops-ci/debs keyed by
the tarball's sha256, so a rerun skips the build. The repository itself (Packages, a Release signed
with a throwaway key: InRelease and Release.gpg) is written per test run and served over HTTP.

Test material only: nothing here ships, and nothing of OpenSIPS is committed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CACHE = Path(os.environ.get("SIPOPS_DEB_CACHE", "/var/cache/sipops-ci/debs"))
RECIPE = 2  # bump when the build, the split or the control files below change
MULTIARCH = "x86_64-linux-gnu"
ARCH = "amd64"
CODENAME = "bookworm"  # the lab's release
SOURCE_ENV = "SIPOPS_OPENSIPS_SOURCE"
SKIP_REASON = (
    f"{SOURCE_ENV} is not set (OpenSIPS release tarballs separated by ':', e.g."
    " ../shared/opensips/opensips-3.6.8.tar.gz): the package-install test builds its packages from them"
)

# What sipops' roles load (common, registrar, proxy, loadbalancer and the database modules), by the
# package the official split puts each in; every other module goes into `opensips` itself.
MODULE_PACKAGES = {
    "opensips": [
        *("signaling", "sl", "tm", "rr", "maxfwd", "sipmsgops", "textops", "mi_fifo", "usrloc", "registrar"),
        *("auth_db", "db_text", "nathelper", "pike", "dispatcher", "dialog", "load_balancer"),
    ],
    "opensips-http-modules": ["httpd", "mi_http"],
    "opensips-auth-modules": ["auth"],
    "opensips-sqlite-module": ["db_sqlite"],
}
# 3.6 ships the schema files of a database module apart (its Makefile's install-modules-dbschema);
# 3.4 installs them with the module (opensips-sqlite-module carries share/opensips/sqlite).
SCHEMA_PACKAGES = {"opensips-sqlite-dbschema": "db_sqlite"}
DESCRIPTIONS = {
    "opensips": "very fast and configurable SIP server (sipops test build)",
    "opensips-http-modules": "HTTP transport layer and Management Interface for OpenSIPS (sipops test build)",
    "opensips-auth-modules": "Authentication interfaces for OpenSIPS (sipops test build)",
    "opensips-sqlite-module": "SQLite database connectivity module for OpenSIPS (sipops test build)",
    "opensips-sqlite-dbschema": "SQLite database schema for OpenSIPS (sipops test build)",
}
_POSTINST = """#!/bin/sh
# As the official package's postinst: the system user OpenSIPS runs as.
set -e
if [ "$1" = configure ]; then
    adduser --quiet --system --group --disabled-password --shell /bin/false --gecos OpenSIPS \\
        --home /run/opensips opensips || true
    if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null || true; fi
fi
"""


def tarballs() -> list[Path]:
    return [Path(p) for p in os.environ.get(SOURCE_ENV, "").split(":") if p.strip()]


def release_of(tarball: Path) -> str:
    """3.6.8 for opensips-3.6.8.tar.gz (the release tarball's top folder is opensips-X.Y.Z/)."""
    m = re.fullmatch(r"opensips-(\d+\.\d+\.\d+)\.tar\.gz", tarball.name)
    if not m:
        raise ValueError(f"{tarball}: not an OpenSIPS release tarball name (opensips-X.Y.Z.tar.gz)")
    return m.group(1)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Debs:
    release: str  # 3.6.8
    version: str  # the packages' version, 3.6.8-1
    dir: Path  # the .deb files

    @property
    def line(self) -> str:
        return self.release.rsplit(".", 1)[0]

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("*.deb"))

    def names(self) -> list[str]:
        return [p.name.split("_")[0] for p in self.files()]


def build_debs(tarball: Path, *, log: Path) -> Debs:
    """The release's packages, from the cache when this tarball (by sha256) was built before."""
    release = release_of(tarball)
    sha = _sha256(tarball)
    out = CACHE / f"opensips-{release}-{sha[:16]}-r{RECIPE}"
    debs = Debs(release, f"{release}-1", out)
    if (out / ".done").is_file():
        return debs
    work = Path(tempfile.mkdtemp(prefix="opensips-debs-"))
    try:
        with tarfile.open(tarball) as tf:
            tf.extractall(work, filter="tar")
        (src,) = [p for p in work.iterdir() if p.is_dir()]
        stage = work / "stage"
        _make(src, stage, log)
        tmp_out = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp_out, ignore_errors=True)
        tmp_out.mkdir(parents=True)
        for pkg_dir in sorted(stage.iterdir()):
            _package(src, pkg_dir, debs.version, tmp_out)
        (tmp_out / ".done").write_text(f"{sha}\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp_out.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return debs


def _make(src: Path, stage: Path, log: Path) -> None:
    """One build of the core and every module needed, then one install per package (as debian/rules)."""
    every = sorted(m for mods in MODULE_PACKAGES.values() for m in mods)
    # cfg_target is compiled in (the default -f path); the module path is not: the packages' cfg sets mpath.
    layout = ["prefix=/usr", "cfg_target=/etc/opensips/", f"LIBDIR=lib/{MULTIARCH}"]
    jobs = f"-j{os.cpu_count() or 2}"
    steps: list[list[str]] = [["make", jobs, "app", "modules", f"module={' '.join(every)}", *layout]]
    for pkg, mods in MODULE_PACKAGES.items():
        base = stage / pkg
        targets = ["install-bin", "install-cfg", "install-modules"] if pkg == "opensips" else ["install-modules"]
        steps.append(["make", *targets, f"module={' '.join(mods)}", f"basedir={base}", f"cfg_prefix={base}", *layout])
    has_schemas = re.search(r"^install-modules-dbschema:", (src / "Makefile").read_text(), re.M) is not None
    for pkg, mod in SCHEMA_PACKAGES.items() if has_schemas else ():
        base = stage / pkg
        steps.append(["make", "install-modules-dbschema", f"module={mod}", f"basedir={base}", *layout])
    with open(log, "ab") as out:
        for argv in steps:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            res = subprocess.run(argv, cwd=src, stdout=out, stderr=subprocess.STDOUT, timeout=1200, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"`{' '.join(argv[:4])} ...` failed in {src}: see {log}")
    # The official opensips package also carries the unit, its defaults and its runtime directory.
    main = stage / "opensips"
    debian = src / "packaging" / "debian"
    for name, dest in (
        ("opensips.service", "lib/systemd/system/opensips.service"),
        ("opensips.default", "etc/default/opensips"),
        ("opensips.tmpfile", "usr/lib/tmpfiles.d/opensips.conf"),
    ):
        (main / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(debian / name, main / dest)


def _elf_files(root: Path) -> list[Path]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(p)
    return found


def _runtime_packages(elves: list[Path]) -> list[str]:
    """Debian packages of the shared libraries these files load (what dpkg-shlibdeps would name)."""
    libs: set[str] = set()
    for elf in elves:  # the libraries each file names itself (NEEDED), where the loader finds them
        dynamic = subprocess.run(["objdump", "-p", str(elf)], capture_output=True, text=True, check=True).stdout
        needed = set(re.findall(r"^\s*NEEDED\s+(\S+)$", dynamic, re.M))
        out = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, check=False, timeout=30).stdout
        libs.update(m.group(2) for m in re.finditer(r"^\s*(\S+) => (/\S+) \(", out, re.M) if m.group(1) in needed)
    pkgs: set[str] = set()
    for lib in sorted(libs):
        real = os.path.realpath(lib)
        for candidate in dict.fromkeys((lib, real, re.sub(r"^/usr/lib/", "/lib/", real))):
            res = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True, check=False)
            if res.returncode == 0:
                pkgs.add(res.stdout.split(":", 1)[0].split(",")[0].strip())
                break
        else:
            raise RuntimeError(f"no Debian package owns {lib} (needed by the OpenSIPS build)")
    return sorted(pkgs)


def _package(src: Path, root: Path, version: str, out: Path) -> Path:
    name = root.name
    elves = _elf_files(root)
    for elf in elves:  # as dh_strip: the packages carry no debug symbols
        subprocess.run(["strip", "--strip-unneeded", str(elf)], check=True, timeout=60)
    depends = _runtime_packages(elves)
    if name == "opensips":
        depends = ["adduser", *depends]
    elif name != "opensips-sqlite-dbschema":
        depends = [f"opensips (= {version})", *depends]
    size_kb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1024 + 1
    control = {
        "Package": name,
        "Version": version,
        "Architecture": ARCH,
        "Maintainer": "sipops tests <sipops-tests@localhost>",
        "Installed-Size": str(size_kb),
        "Depends": ", ".join(dict.fromkeys(depends)),
        "Section": "net",
        "Priority": "optional",
        "Homepage": "https://opensips.org",
        "Description": DESCRIPTIONS[name],
    }
    meta = root / "DEBIAN"
    meta.mkdir()
    (meta / "control").write_text("".join(f"{k}: {v}\n" for k, v in control.items() if v))
    conffiles = sorted("/" + str(p.relative_to(root)) for p in (root / "etc").rglob("*") if p.is_file())
    if conffiles:
        (meta / "conffiles").write_text("".join(f"{c}\n" for c in conffiles))
    if name == "opensips":
        (meta / "postinst").write_text(_POSTINST)
        (meta / "postinst").chmod(0o755)
    for p in root.rglob("*"):  # what dpkg-deb demands: root-owned modes, no group/world write
        if not p.is_symlink():
            p.chmod(p.stat().st_mode & ~0o022)
    deb = out / f"{name}_{version}_{ARCH}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return deb


class SigningKey:
    """A throwaway OpenPGP key in its own GNUPGHOME; close() stops the gpg-agent gpg started for it."""

    def __init__(self, directory: Path, uid: str) -> None:
        self.home = directory
        self.home.mkdir(mode=0o700, parents=True)
        self._gpg("--quick-gen-key", uid, "ed25519", "sign", "never")
        out = self._gpg("--list-keys", "--with-colons").stdout
        self.fingerprint = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))

    def _gpg(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        argv = ["gpg", "--homedir", str(self.home), "--batch", "--yes", "--quiet", "--pinentry-mode", "loopback"]
        argv += ["--passphrase", "", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120)

    def export(self, dest: Path) -> None:
        """The public key as a binary keyring (what apt's signed-by takes in a .gpg file)."""
        self._gpg("--output", str(dest), "--export", self.fingerprint)

    def sign(self, release: Path) -> None:
        """InRelease (clearsigned) and Release.gpg (detached) beside the Release file."""
        key = ["--local-user", self.fingerprint, "--digest-algo", "SHA512"]
        self._gpg(*key, "--output", str(release.with_name("InRelease")), "--clearsign", str(release))
        self._gpg(*key, "--output", str(release.with_name("Release.gpg")), "--armor", "--detach-sign", str(release))

    def close(self) -> None:
        env = {**os.environ, "GNUPGHOME": str(self.home)}
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True, check=False, timeout=30)


def write_repository(root: Path, debs: Debs, key: SigningKey, *, suite: str = CODENAME) -> None:
    """dists/<suite>/<line>-releases/binary-amd64/Packages(.gz), a signed Release, and the pool."""
    component = f"{debs.line}-releases"
    pool = root / "pool" / component
    pool.mkdir(parents=True, exist_ok=True)
    stanzas = []
    for deb in debs.files():
        target = pool / deb.name
        if not target.exists():
            shutil.copyfile(deb, target)
        data = target.read_bytes()
        control = subprocess.run(
            ["dpkg-deb", "--field", str(target)], capture_output=True, text=True, check=True, timeout=30
        ).stdout.rstrip("\n")
        sha256 = hashlib.sha256(data).hexdigest()  # apt verifies with SHA256 alone (MD5/SHA1 are not trusted)
        extra = {"Filename": str(target.relative_to(root)), "Size": str(len(data)), "SHA256": sha256}
        stanzas.append(control + "\n" + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    index = "\n".join(stanzas).encode()
    dist = root / "dists" / suite
    binary = dist / component / f"binary-{ARCH}"
    binary.mkdir(parents=True, exist_ok=True)
    (binary / "Packages").write_bytes(index)
    (binary / "Packages.gz").write_bytes(gzip.compress(index, mtime=0))
    files = [p for p in sorted(dist.rglob("Packages*")) if p.is_file()]
    head = {
        "Origin": "sipops-tests",
        "Label": "sipops test repository standing in for apt.opensips.org",
        "Suite": suite,
        "Codename": suite,
        "Date": formatdate(usegmt=True),
        "Architectures": ARCH,
        "Components": component,
    }
    text = "".join(f"{k}: {v}\n" for k, v in head.items())
    text += "SHA256:\n"
    for p in files:
        data = p.read_bytes()
        text += f" {hashlib.sha256(data).hexdigest()} {len(data):>10} {p.relative_to(dist)}\n"
    release = dist / "Release"
    release.write_text(text)
    key.sign(release)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@contextlib.contextmanager
def serve(root: Path, address: str) -> Iterator[str]:
    """Serve `root` over HTTP on address (a free port) for the with-block; yields the base URL."""
    server = ThreadingHTTPServer((address, 0), partial(_QuietHandler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="sipops-test-apt-repo", daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
