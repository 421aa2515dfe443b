"""sglang_fair: SGLang with FairBatching scheduling."""

__version__ = "0.1.0"

#: The exact SGLang release the runtime patches: the launcher refuses to start with another one
#: (:func:`sglang_version_problem`), and the tests compare it with the installed one and the pin.
SGLANG_VERSION = "0.5.23"


def sglang_version_problem() -> str | None:
    """One line saying why the installed SGLang is not the release the runtime patches, else None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("sglang")
    except PackageNotFoundError:
        return f"sglang is not installed; sglang_fair needs sglang=={SGLANG_VERSION}"
    if installed != SGLANG_VERSION:
        return (f"sglang {installed} is installed, but sglang_fair patches SGLang {SGLANG_VERSION}'s internals;"
                f" install sglang=={SGLANG_VERSION} (pinned in requirements/)")
    return None
