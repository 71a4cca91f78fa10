"""rpcd: an RPC service daemon. Twisted owns the network; gevent runs the calls."""

from rpcd.methods import method

__all__ = ["default_config", "method", "version_text"]
# The one version source: setup.cfg reads it (attr:), and every --version prints it.
__version__ = "0.1.0"


def version_text(program: str = "rpcd") -> str:
    """`PROGRAM X.Y.Z (Twisted A, gevent B, Python C)`: one line, for --version."""
    import platform

    import gevent

    from twisted import version as twisted_version

    return (
        f"{program} {__version__} (Twisted {twisted_version.short()}, "
        f"gevent {gevent.__version__}, Python {platform.python_version()})"
    )


def default_config() -> str:
    """The documented config file, every key at its default (`twistd rpcd --print-config`)."""
    from importlib.resources import files

    return files("rpcd").joinpath("rpcd.toml").read_text(encoding="utf-8")
