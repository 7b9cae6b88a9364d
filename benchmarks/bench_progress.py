"""A progress bar on stderr, drawn only when stderr is a terminal (logs stay clean)."""

from __future__ import annotations

import sys


class Progress:
    """tqdm when installed, else a one-line text bar; nothing at all off a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self._bar = total, 0, None
        self.enabled = enabled and sys.stderr.isatty()
        if self.enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc="carafe bench", unit="row", file=sys.stderr)
            except ImportError:
                self._bar = None

    def step(self, text: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {text[:50]:<50}")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
