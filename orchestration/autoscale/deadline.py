"""`--deadline`: when the queue's work should be done, as an absolute UTC time.

Accepted forms:
- a duration from now: `90s`, `20m`, `1h30m`, `2h`;
- a time of day, `14:30` or `14:30:15`, in the local time zone: the next such moment;
- an ISO 8601 time, `2026-12-01T14:30` (local time zone unless it names one, like `Z` or `+01:00`).
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta

from workpool.errors import UsageError

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_TIME_OF_DAY = re.compile(r"^\d{1,2}:\d{2}(?::\d{2})?$")


def parse_deadline(text: str, now: datetime) -> datetime:
    """The deadline `text` names, relative to `now` (an aware datetime); an aware datetime."""
    value = text.strip().lower()
    match = _DURATION.match(value)
    if value and match and any(match.groups()):
        hours, minutes, seconds = (int(g or 0) for g in match.groups())
        return now + timedelta(hours=hours, minutes=minutes, seconds=seconds)
    local_now = now.astimezone()
    if _TIME_OF_DAY.match(value):
        try:
            of_day = time.fromisoformat(value if len(value.split(":")[0]) == 2 else "0" + value)
        except ValueError:
            raise UsageError(f"--deadline {text!r}: not a time of day (expected HH:MM or HH:MM:SS)") from None
        at = datetime.combine(local_now.date(), of_day, tzinfo=local_now.tzinfo)
        return at if at > local_now else at + timedelta(days=1)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--deadline {text!r}: expected a duration (20m, 1h30m, 90s), a time of day (14:30) "
            "or an ISO time (2026-12-01T14:30Z)"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=local_now.tzinfo)
