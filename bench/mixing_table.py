"""QUASI_RANDOM's mixing against RANDOM's, measured as docs/orders-and-memory.md says,
per page count and window: a 10-class file written class by class, batches of
256, the mean total-variation distance between each batch's class histogram and the file's.

    python bench/mixing_table.py                      # the table in docs/orders-and-memory.md
    python bench/mixing_table.py --windows 64 --pages 72 80 96 160 --per-page 125

Each figure is QUASI_RANDOM's mean distance over RANDOM's, both over as many epochs as make
about ``--batches`` batches (3,000: the ratio to about 1%). It needs only
``quasi_random_order`` and ``mixing_distance``, so the same command measures an older
checkout.
"""

from __future__ import annotations

import argparse

import numpy as np

from fastforward.traversal_order.quasi_random import mixing_distance, quasi_random_order

BATCH = 256


def ratio(pages: int, per_page: int, window: int, batches: int) -> float:
    samples = pages * per_page
    labels = (np.arange(samples) * 10) // samples
    page = np.arange(samples) // per_page
    indices = np.arange(samples)
    epochs = max(1, -(-batches // (samples // BATCH)))
    quasi = np.mean([mixing_distance(quasi_random_order(indices, page, window,
                                                        np.random.default_rng(e)), labels, BATCH)
                     for e in range(epochs)])
    random = np.mean([mixing_distance(np.random.default_rng(1_000_000 + e).permutation(indices),
                                      labels, BATCH) for e in range(epochs)])
    return float(quasi / random)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[32, 64, 100])
    parser.add_argument("--pages", type=int, nargs="+",
                        default=[64, 72, 80, 96, 100, 128, 160, 200, 256, 390, 1000, 2047, 3000])
    parser.add_argument("--per-page", type=int, default=125)
    parser.add_argument("--batches", type=int, default=3000)
    args = parser.parse_args()
    print(f"{args.per_page} samples per page; QUASI_RANDOM / RANDOM, mean TV distance, batch 256")
    print("| pages | " + " | ".join(f"window {w}" for w in args.windows) + " |")
    print("|---|" + "---|" * len(args.windows))
    for pages in args.pages:
        cells = [f"{ratio(pages, args.per_page, w, args.batches):.2f}" for w in args.windows]
        print(f"| {pages:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
