"""python -m clipcrawl.tasks.world OUT [--pages-per-file N --wat-only ...]: write a world and print where it is."""

from __future__ import annotations

import argparse
import time

from clipcrawl.tasks.world.generate import WorldSpec, generate_world


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m clipcrawl.tasks.world", description=__doc__)
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crawl-id", default="CC-MAIN-2099-13")
    p.add_argument("--segments", type=int, default=2)
    p.add_argument("--files-per-segment", type=int, default=2)
    p.add_argument("--pages-per-file", type=int, default=40)
    p.add_argument("--links-per-page", type=int, nargs=2, default=(10, 40))
    p.add_argument("--wat-only", action="store_true", help="skip WARC files (31k pages ~ a 100 MB WAT)")
    p.add_argument("--workers", type=int, default=1, help="processes writing files in parallel")
    p.add_argument("--force", action="store_true")
    a = p.parse_args()
    spec = WorldSpec(
        seed=a.seed,
        crawl_id=a.crawl_id,
        segments=a.segments,
        files_per_segment=a.files_per_segment,
        pages_per_file=a.pages_per_file,
        links_per_page=tuple(a.links_per_page),
        warc=not a.wat_only,
    )
    t0 = time.perf_counter()
    world = generate_world(a.out, spec, workers=a.workers, force=a.force)
    print(
        f"{world.root}: {len(world.wat_uris())} WAT, {len(world.warc_uris())} WARC, "
        f"{world.manifest_pairs().num_rows} img tags, {len(world.expected_pairs())} expected pairs "
        f"in {time.perf_counter() - t0:.1f}s"
    )


if __name__ == "__main__":
    main()
