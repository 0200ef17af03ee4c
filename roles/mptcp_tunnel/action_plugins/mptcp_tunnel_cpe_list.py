"""`ansible.builtin.copy` whose `--diff` is shown whatever the file's size.

The BGW's CPE list (ids and prefixes, no secrets) of a 10 000-CPE fleet is ~0.5 MB, beyond Ansible's
`max_diff_size` (100 KiB by default), so a plain copy would say "diff skipped" exactly where an
operator wants to see the one CPE added. Same arguments and behaviour as copy otherwise; the limit is
lifted only inside this task's worker process.
"""

from __future__ import annotations

from typing import Any

from ansible import constants as C
from ansible.plugins.action.copy import ActionModule as CopyAction


class ActionModule(CopyAction):  # type: ignore[misc]
    def _get_diff_data(self, *args: Any, **kwargs: Any) -> Any:
        limit = C.MAX_FILE_SIZE_FOR_DIFF
        C.MAX_FILE_SIZE_FOR_DIFF = 0  # 0 = no limit
        try:
            return super()._get_diff_data(*args, **kwargs)
        finally:
            C.MAX_FILE_SIZE_FOR_DIFF = limit
