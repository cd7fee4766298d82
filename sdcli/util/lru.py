"""A small least-recently-used cache (encoded prompts, decoded init images)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable


class LRUCache(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)

    def get_or(self, key, make: Callable[[], Any]):
        """The cached value of `key`, made with `make()` and kept when missing."""
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self.put(key, value)
        return value
