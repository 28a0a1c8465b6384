"""Errors a user can fix: the CLI prints them as one line, without a traceback."""


class UsageError(ValueError):
    """Bad input that the user can correct (a path, a flag value, a config field).

    The message names the problem and, where there is a choice, the allowed values.
    """


def describe_validation_error(error, what: str = "config", prefix: str = "") -> str:
    """One line from a pydantic ValidationError, the same for every config in viewstream:
    ``invalid <what>: a.b: <message> (got <value>); unknown field 'c'``. `prefix` is where the
    validated mapping sits in the whole config (``"method."``), so the path is the user's.

    Takes the error by duck type (``error.errors()``) so this leaf module imports no pydantic.
    """
    parts = []
    for item in error.errors():
        where = prefix + ".".join(str(p) for p in item["loc"]) or what
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
            continue
        got = item.get("input")
        shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
        parts.append(f"{where}: {item['msg']}{shown}")
    return f"invalid {what}: " + "; ".join(parts)


def usage_error_from(error, what: str = "config", prefix: str = "") -> UsageError:
    """`describe_validation_error` as the UsageError the CLI prints."""
    return UsageError(describe_validation_error(error, what, prefix))
