"""The one refusal of a misspelled keyword option (connect()'s, the pytest fixtures'): a ConfigError naming
every unknown name, a close match when there is one, and the valid names, instead of Python's bare
TypeError from the dataclass or class the options are handed to.

Here, at the bottom layer, so that the network, testing and any later owner of keyword options say it in
one wording.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from plugbay.errors import ConfigError


def check_option_names(owner: str, given: Iterable[object], valid: Iterable[str], listed_as: str,
                       left_out: Mapping[str, str] | None = None) -> None:
    """Refuse each name of ``given`` that is not in ``valid``, as ``owner`` (such as "connect()") whose
    options are ``listed_as`` (such as "RemoteConfig's fields").

    ``left_out``: names of ``valid`` the owner takes otherwise (a positional argument) or refuses, each
    with what to say when one is given as an option anyway ("" to say nothing); they are not offered.
    """
    skip = dict(left_out or {})
    names = [name for name in valid if name not in skip]
    unknown = [name for name in given if name not in names]
    if not unknown:
        return
    notes = [skip[name] for name in unknown if isinstance(name, str) and skip.get(name)]
    close = [match for name in unknown if name not in skip
             for match in difflib.get_close_matches(str(name), names, n=1)]
    if close:
        notes.append(f"did you mean {', '.join(close)}?")
    hint = f" ({'; '.join(notes)})" if notes else ""
    raise ConfigError(f"{owner} has no option {', '.join(repr(n) for n in unknown)}{hint}; its options are"
                      f" {listed_as}: {', '.join(names)}")
