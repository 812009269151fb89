"""The synthetic crawl world: a small fictional web in Common Crawl's formats, with ground truth.

    world = generate_world("/tmp/w", WorldSpec(seed=0))
    world.wat_uris(); world.expected_pairs(); world.expected_downloads()
    with ImageServer(world.root) as srv: srv.download_settings()   # resolve map, CA bundle, short timeouts

Image behaviours (503 twice, redirect loop, decompression bomb, X-Robots-Tag...) and their
expected download status: tasks/world/behaviours.py.
"""

from clipcrawl.tasks.world.generate import World, WorldSpec, generate_world
from clipcrawl.tasks.world.scenes import Scene, describe, render_image, render_scene, sample_training_pairs
from clipcrawl.tasks.world.server import ImageServer
from clipcrawl.tasks.world.tiny_clip import TINY_CLIP_DIR, embed_settings

__all__ = [
    "World",
    "WorldSpec",
    "generate_world",
    "Scene",
    "describe",
    "render_scene",
    "render_image",
    "sample_training_pairs",
    "ImageServer",
    "TINY_CLIP_DIR",
    "embed_settings",
]
