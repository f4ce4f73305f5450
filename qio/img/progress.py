"""qemu-img's progress meter (util/qemu-progress.c), single-precision floats and all.

``-p`` prints ``    (NN.NN/100%)`` followed by a carriage return whenever the value moved by
more than ``min_skip`` points since the last print, or is exactly 0 or 100; the end prints a
newline.  The arithmetic is done in C ``float``, so the values printed match qemu-img's.
"""

from __future__ import annotations

import struct
import sys


def f32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


class Progress:
    def __init__(self, enabled: bool, min_skip: float) -> None:
        self.enabled = enabled
        self.min_skip = f32(min_skip)
        self.current = 0.0
        self.last_print = 0.0

    def print(self, delta: float, maximum: int) -> None:
        if maximum == 0:
            current = f32(delta)
        else:
            current = f32(self.current + f32(f32(f32(delta) / 100) * maximum))
        if current > 100:
            current = 100.0
        self.current = current
        if (
            current > f32(self.last_print + self.min_skip)
            or current < f32(self.last_print - self.min_skip)
            or current == 0
            or current == 100
        ):
            self.last_print = current
            if self.enabled:
                sys.stdout.write(f"    ({current:3.2f}/100%)\r")
                sys.stdout.flush()

    def end(self) -> None:
        if self.enabled:
            sys.stdout.write("\n")
            sys.stdout.flush()
