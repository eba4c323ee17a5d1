"""Command plans of the install phases, per OS and install method. Pure: facts and vars in, steps out."""

from __future__ import annotations

from dataclasses import dataclass

from sipops.opensips import SOURCE_PREFIX, OpenSIPSLayout
from sipops.provision.osinfo import OsInfo
from sipops.provision.steps import PhasePlan, Step, Upload, q

# Newest release of each LTS line that sipops builds from source by default.
DEFAULT_RELEASE = {"3.4": "3.4.18", "3.6": "3.6.8"}
SOURCE_URL = "https://opensips.org/pub/opensips/{release}/opensips-{release}.tar.gz"
APT_KEYRING = "/usr/share/keyrings/opensips-org.gpg"
APT_LIST = "/etc/apt/sources.list.d/opensips.list"
BUILD_MARKER = ".sipops-build"
# Built into the core (net/ in the source tree): never in a module= list, no .so of their own.
CORE_MODULES = frozenset({"proto_udp", "proto_tcp"})
# Database modules whose schema files the database phase loads (share/opensips/<db>/).
_SCHEMA_DBS = frozenset({"db_sqlite", "db_mysql", "db_postgres"})

_BUILD_BASE = {
    "apt": [
        "gcc",
        "libc6-dev",  # only a Recommends of gcc, and recommends are not installed
        "make",
        "bison",
        "flex",
        "pkg-config",
        "libncurses-dev",
        "libxml2-dev",
        "libssl-dev",
        "libcurl4-openssl-dev",
        "tar",
        "gzip",
        "curl",
    ],
    "dnf": [
        "gcc",
        "make",
        "bison",
        "flex",
        "pkgconf-pkg-config",
        "ncurses-devel",
        "libxml2-devel",
        "openssl-devel",
        "libcurl-devel",
        "tar",
        "gzip",
        "curl",
    ],
}
_BUILD_BASE["yum"] = [p.replace("pkgconf-pkg-config", "pkgconfig") for p in _BUILD_BASE["dnf"]]

# Libraries a module needs at build time (only modules outside the default build have any).
_MODULE_BUILD_DEPS: dict[str, dict[str, list[str]]] = {
    "db_sqlite": {"apt": ["libsqlite3-dev"], "dnf": ["sqlite-devel"]},
    "db_mysql": {"apt": ["default-libmysqlclient-dev"], "dnf": ["mariadb-connector-c-devel"]},
    "db_postgres": {"apt": ["libpq-dev"], "dnf": ["libpq-devel"]},
    "httpd": {"apt": ["libmicrohttpd-dev"], "dnf": ["libmicrohttpd-devel"]},
    "json": {"apt": ["libjson-c-dev"], "dnf": ["json-c-devel"]},
    "cachedb_redis": {"apt": ["libhiredis-dev"], "dnf": ["hiredis-devel"]},
    "tls_openssl": {"apt": ["libssl-dev"], "dnf": ["openssl-devel"]},
    "prometheus": {"apt": [], "dnf": []},
}
# Runtime libraries an adopted (existing) install's modules need: a source build's -dev packages and a
# package install's module packages pull these in themselves. Debian 13 / Ubuntu 24.04 renamed some (t64).
_MODULE_RUNTIME_DEPS: dict[str, dict[str, list[str]]] = {
    "db_sqlite": {"apt": ["libsqlite3-0"], "dnf": ["sqlite-libs"]},
    "db_mysql": {"apt": ["libmariadb3"], "dnf": ["mariadb-connector-c"]},
    "httpd": {"apt": ["libmicrohttpd12"], "dnf": ["libmicrohttpd"]},
    "json": {"apt": ["libjson-c5"], "dnf": ["json-c"]},
    "cachedb_redis": {"apt": ["libhiredis0.14"], "dnf": ["hiredis"]},
}
_T64 = {"trixie": {"libmicrohttpd12": "libmicrohttpd12t64"}, "noble": {"libmicrohttpd12": "libmicrohttpd12t64"}}


@dataclass(frozen=True)
class InstallInputs:
    """What the phases need from the inventory and the roles of one host."""

    os: OsInfo
    layout: OpenSIPSLayout
    modules: tuple[str, ...]  # OpenSIPS modules the roles load
    module_packages: tuple[str, ...]  # package names of those modules (package installs)
    packages: tuple[str, ...]  # the roles' OS packages for this package manager
    release: str  # full release for source builds, e.g. 3.6.8
    source: str  # tarball URL or a local path on the operator's machine
    yum_release_rpm: str  # URL of the opensips-yum-releases package (RHEL family)
    apt_url: str  # the apt repository (Debian family): opensips_apt_url
    apt_key_url: str  # the key that signs it: opensips_apt_key_url
    crowdsec_capi: bool = True  # role crowdsec: register to CrowdSec's Central API when the package installs


def _installed_test(pm: str, pkgs: list[str]) -> str:
    if pm == "apt":
        checks = [f"dpkg-query -W -f='${{Status}}' {q(p)} 2>/dev/null | grep -q 'ok installed'" for p in pkgs]
    else:
        checks = [f"rpm -q {q(p)}" for p in pkgs]
    return " && ".join(checks) if checks else "true"


def install_missing(pm: str, pkgs: list[str], what: str) -> Step:
    """One step installing only the packages that are missing (one package-manager run)."""
    pkgs = sorted(dict.fromkeys(pkgs))
    words = " ".join(q(p) for p in pkgs)
    if pm == "apt":
        missing = (
            f"missing=''; for p in {words}; do dpkg-query -W -f='${{Status}}' \"$p\" 2>/dev/null "
            "| grep -q 'ok installed' || missing=\"$missing $p\"; done; "
        )
        run = (
            missing + "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            "--no-install-recommends $missing"
        )
    else:
        missing = f'missing=\'\'; for p in {words}; do rpm -q "$p" >/dev/null 2>&1 || missing="$missing $p"; done; '
        run = missing + f"{pm} install -y $missing"
    return Step(f"install {what}: {' '.join(pkgs)}", run, unless=_installed_test(pm, pkgs))


def dependencies(inp: InstallInputs) -> PhasePlan:
    plan = PhasePlan("dependencies")
    pkgs = [*inp.packages, "python3"]
    if inp.os.family == "debian":
        pkgs.append("python3-venv")
    if inp.os.family == "rhel" and inp.os.pkg == "dnf":
        plan.steps.append(Step("enable EPEL", "dnf install -y epel-release", unless="rpm -q epel-release"))
    if "crowdsec" in pkgs and not inp.crowdsec_capi:
        # Debian's postinst registers to the Central API (and fails the install offline) unless this file
        # exists with a comment before it runs (README.Debian); left alone once it exists.
        capi = "/etc/crowdsec/online_api_credentials.yaml"
        note = "# no thanks: crowdsec_capi is false in the sipops inventory"
        plan.steps.append(
            Step(
                "crowdsec: no Central API registration (crowdsec_capi: false)",
                f"mkdir -p /etc/crowdsec && echo {q(note)} > {capi}",
                unless=f"test -e {capi}",
            )
        )
    plan.steps.append(install_missing(inp.os.pkg, pkgs, "packages"))
    return plan


def opensips(inp: InstallInputs) -> PhasePlan:
    method = inp.layout.install
    if method == "package":
        return _package(inp)
    if method == "source":
        return _source(inp)
    return _existing(inp)


def _package(inp: InstallInputs) -> PhasePlan:
    source = inp.apt_url.rstrip("/") if inp.os.pkg == "apt" else "the official repository"
    plan = PhasePlan("opensips", note=f"OpenSIPS {inp.layout.version} from {source}")
    pkgs = ["opensips", *inp.module_packages]
    if inp.os.pkg == "apt":
        repo = inp.apt_url.rstrip("/")
        line = f"deb [signed-by={APT_KEYRING}] {repo} {inp.os.codename} {inp.layout.version}-releases"
        # The list names the key's source too: a changed opensips_apt_key_url fetches the key again
        # (a kept old keyring would make apt refuse the new repository's signatures).
        key_note = f"# signed-by key from {inp.apt_key_url}"
        listing = f"{key_note}\n{line}\n"
        plan.steps.append(
            Step(
                f"repository key from {inp.apt_key_url} (signed-by keyring, not apt-key)",
                f"curl -fsSL {q(inp.apt_key_url)} -o {APT_KEYRING}.tmp && mv {APT_KEYRING}.tmp {APT_KEYRING}",
                unless=f"test -s {APT_KEYRING} && grep -qxF {q(key_note)} {APT_LIST}",
            )
        )
        # Put by the push agent right after the key step (which reads the list's key note first).
        plan.steps.append(
            Step(
                f"repository {repo} {inp.layout.version}-releases for {inp.os.codename}",
                f"grep -qxF {q(line)} {APT_LIST}",
                unless=f"printf %s {q(listing)} | cmp -s - {APT_LIST}",
                upload=Upload(APT_LIST, content=listing.encode()),
            )
        )
    else:
        plan.steps.append(
            Step(
                f"repository {inp.layout.version} releases for EL{inp.os.el}",
                f"{inp.os.pkg} install -y {q(inp.yum_release_rpm)}",
                unless="rpm -q opensips-yum-releases",
            )
        )
    plan.steps.append(install_missing(inp.os.pkg, pkgs, "OpenSIPS"))
    plan.steps.append(_version_check(inp.layout))
    return plan


def _version_check(layout: OpenSIPSLayout) -> Step:
    want = f"opensips {layout.version}."
    return Step(
        f"OpenSIPS at {layout.bin} is {layout.version}",
        f'echo "{layout.bin} reports: $({layout.bin} -V 2>&1 | head -n 1), expected {want}x" >&2; exit 1',
        unless=f"{layout.bin} -V 2>&1 | grep -qF {q(want)}",
    )


def _source(inp: InstallInputs) -> PhasePlan:
    plan = PhasePlan("opensips", note=f"OpenSIPS {inp.release} built into {SOURCE_PREFIX}")
    pm = inp.os.pkg
    deps = list(_BUILD_BASE[pm])
    for m in inp.modules:
        deps += _MODULE_BUILD_DEPS.get(m, {}).get("apt" if pm == "apt" else "dnf", [])
    plan.steps.append(install_missing(pm, deps, "build dependencies"))
    src_dir = "/usr/local/src"
    tarball = f"{src_dir}/opensips-{inp.release}.tar.gz"
    if inp.source.startswith(("http://", "https://")):
        plan.steps.append(
            Step(
                f"download {inp.source}",
                f"mkdir -p {src_dir} && curl -fsSL {q(inp.source)} -o {tarball}.tmp && mv {tarball}.tmp {tarball}",
                unless=f"test -s {tarball}",
            )
        )
    else:
        plan.steps.append(
            Step(
                f"upload {inp.source}",
                f"test -s {tarball}",
                unless=f"test -s {tarball}",
                upload=Upload(tarball, local=inp.source),
            )
        )
    modules = " ".join(sorted(m for m in dict.fromkeys(inp.modules) if m not in CORE_MODULES))
    stamp = f"{inp.release} {modules}"
    marker = f"{SOURCE_PREFIX}/{BUILD_MARKER}"
    plan.steps.append(
        Step(
            f"build and install {inp.release} with {modules}",
            _build_script(tarball, f"{src_dir}/opensips-{inp.release}", modules, inp.layout.share_dir)
            + f" && printf '%s\\n' {q(stamp)} > {marker}",
            # Rebuild only when the release or the module set changed.
            unless=f"test -x {inp.layout.bin} && grep -qxF {q(stamp)} {marker}",
        )
    )
    plan.steps += _ready_to_run(inp)
    return plan


def _build_script(tarball: str, build_dir: str, modules: str, share_dir: str) -> str:
    """Unpack, build the core and only `modules` (module= replaces the default list: minutes, not ten), install.

    prefix= goes to the build as well as to the install: the cfg and module paths are compiled in.
    """
    make_args = f"prefix={SOURCE_PREFIX}/ module={q(modules)}"
    # 3.6 installs each db module's schemas (install-modules-dbschema); 3.4's Makefile has no such target and
    # its packages ship scripts/<db>/ under share/opensips, so those are copied the same way.
    dbs = " ".join(m.removeprefix("db_") for m in modules.split() if m in _SCHEMA_DBS)
    return (
        f"rm -rf {build_dir} && mkdir -p {build_dir} && tar -xzf {tarball} -C {build_dir} --strip-components=1"
        f" && cd {build_dir}"
        " && if grep -q '^install-modules-dbschema:' Makefile; then schemas=install-modules-dbschema; else schemas=; fi"
        f' && make -j"$(nproc)" app modules {make_args}'
        f" && make install-bin install-cfg install-modules $schemas {make_args}"
        f' && if [ -z "$schemas" ]; then for db in {dbs}; do mkdir -p {share_dir}'
        f" && cp -r scripts/$db {share_dir}/ || exit 1; done; fi"
        f" && cd / && rm -rf {build_dir}"  # the objects of a build are not kept on a proxy (the tarball is)
    )


def _ready_to_run(inp: InstallInputs) -> list[Step]:
    """What a built or adopted install needs before it can run: its user, the right version, its libraries."""
    return [_user_step(inp.layout), _version_check(inp.layout), _libraries_found(inp.layout, inp.modules)]


def _user_step(layout: OpenSIPSLayout) -> Step:
    return Step(
        f"system user {layout.user}",
        f"useradd --system --user-group --home-dir /var/lib/opensips --shell /usr/sbin/nologin {layout.user}",
        unless=f"id -u {layout.user}",
    )


def _runtime_libs(inp: InstallInputs) -> list[str]:
    key = "apt" if inp.os.pkg == "apt" else "dnf"
    rename = _T64.get(inp.os.codename, {})
    pkgs = [p for m in inp.modules for p in _MODULE_RUNTIME_DEPS.get(m, {}).get(key, [])]
    return [rename.get(p, p) for p in dict.fromkeys(pkgs)]


def _libraries_found(layout: OpenSIPSLayout, modules: tuple[str, ...]) -> Step:
    """Every shared library of the binary and the loaded modules resolves (ldd says none is missing)."""
    files = [layout.bin] + [f"{layout.mpath.rstrip('/')}/{m}.so" for m in sorted(modules) if m not in CORE_MODULES]
    check = f'for f in {" ".join(files)}; do test -e "$f" || continue; ldd "$f"; done | grep -q \'not found\''
    return Step(
        "OpenSIPS and its modules find every shared library",
        f'for f in {" ".join(files)}; do test -e "$f" || {{ echo "missing $f"; continue; }};'
        ' ldd "$f" | grep \'not found\' | sed "s|^|$(basename $f): |"; done; exit 1',
        unless=f"! ( {check} )",
        verify=True,
    )


def _existing(inp: InstallInputs) -> PhasePlan:
    plan = PhasePlan("opensips", note=f"adopting the OpenSIPS install at {inp.layout.prefix}")
    libs = _runtime_libs(inp)
    if libs:
        plan.steps.append(install_missing(inp.os.pkg, libs, "libraries of the loaded modules"))
    plan.steps.append(
        Step(
            f"OpenSIPS binary at {inp.layout.bin}",
            f"echo 'no executable {inp.layout.bin}: set opensips_prefix to the install prefix' >&2; exit 1",
            unless=f"test -x {inp.layout.bin}",
        )
    )
    plan.steps += _ready_to_run(inp)
    return plan


def directories(layout: OpenSIPSLayout) -> PhasePlan:
    """Runtime and data directories OpenSIPS writes to (its user must own them)."""
    plan = PhasePlan("directories")
    # `make install` leaves <prefix>/etc/opensips at 0700 root: OpenSIPS (its own user) could not read its cfg.
    for path, owner in (("/var/lib/opensips", layout.user), (layout.cfg_dir, "root")):
        want = f"750:{owner}:{layout.group}"
        plan.steps.append(
            Step(
                f"directory {path} ({want})",
                f"mkdir -p {path} && chown {owner}:{layout.group} {path} && chmod 0750 {path}",
                unless=f'test "$(stat -c %a:%U:%G {path} 2>/dev/null)" = {want}',
            )
        )
    return plan
