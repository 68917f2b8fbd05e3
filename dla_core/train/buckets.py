"""Aspect-ratio buckets: targets keep their aspect instead of being centre-cropped to a square.

A bucket is a target size ``(width, height)`` in pixels, both sides multiples of
:data:`LATENT_PATCH` (FLUX: 8x VAE, then 2x2 latent packing = 16 px per image token), with an area
close to ``resolution**2``. :func:`bucket_sizes` lists them (from 1:1 out to ``max_aspect``, landscape
and portrait); a target goes to the bucket nearest its aspect ratio (:func:`assign_bucket`), is scaled
to cover it and centre-cropped to it (:func:`dla_core.train.prepare.target_pixels`). An image whose
aspect is so far from every bucket that more than ``max_crop`` of its longer side would be cut
(a 3:1 panorama with ``max_aspect: 2``) fits no bucket: :func:`assign_buckets` refuses the data set
before anything loads, naming the files.

:class:`BucketBatchSampler` makes every batch from one bucket and visits every sample once per
epoch; the order is a pure function of (seed, epoch, position), so a resumed run continues the same
stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import DLAInputError

LATENT_PATCH = 16  # px per FLUX image token (VAE factor 8 x 2x2 packing)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def bucket_step(resolution: int, patch: int = LATENT_PATCH) -> int:
    """Width step between buckets: ``resolution / 16`` rounded to the patch (64 px at 1024, 32 at 512), as SDXL's."""
    return _round_to(resolution / 16, patch)


def bucket_sizes(resolution: int, max_aspect: float = 2.0, patch: int = LATENT_PATCH) -> list[tuple[int, int]]:
    """Bucket sizes ``(width, height)`` of area about ``resolution**2``, sorted from the tallest to the widest.

    Landscape buckets: widths ``resolution, resolution + step, ...`` (:func:`bucket_step`), each with the
    multiple of ``patch`` nearest to ``resolution**2 / width`` as height, while long/short <= ``max_aspect``;
    portrait buckets are their transposes. At 1024: 1024x1024, 1088x960, 1152x912, 1216x864, 1280x816,
    1344x784, 1408x752 and the seven transposed (13 buckets).
    """
    area, step = resolution * resolution, bucket_step(resolution, patch)
    sizes = set()
    width = _round_to(resolution, patch)
    while True:
        height = _round_to(area / width, patch)
        if width / height > max_aspect + 1e-9:
            break
        sizes.update({(width, height), (height, width)})
        width += step
    if not sizes:
        sizes.add((resolution, resolution))
    return sorted(sizes, key=lambda size: (size[0] / size[1], size[0]))


def crop_fraction(width: int, height: int, bucket: tuple[int, int]) -> float:
    """Fraction of the image's width or height cut when it is scaled to cover ``bucket`` and centre-cropped."""
    image_aspect, bucket_aspect = width / height, bucket[0] / bucket[1]
    return 1.0 - min(image_aspect, bucket_aspect) / max(image_aspect, bucket_aspect)


def assign_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log ratio) to ``width / height``."""
    log_aspect = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - log_aspect), -b[0] * b[1]))


def assign_buckets(
    sizes: Sequence[tuple[int, int]],
    resolution: int,
    aspect_buckets: bool = True,
    max_aspect: float = 2.0,
    max_crop: float = 0.2,
    names: Sequence[str] | None = None,
) -> list[tuple[int, int]]:
    """The bucket of every target (``sizes``: ``(width, height)`` in pixels); raises when one fits none.

    Without ``aspect_buckets`` every target goes to the square ``resolution`` (centre crop, any aspect).
    """
    if not aspect_buckets:
        return [(resolution, resolution)] * len(sizes)
    buckets = bucket_sizes(resolution, max_aspect)
    chosen, misfits = [], []
    for k, (width, height) in enumerate(sizes):
        bucket = assign_bucket(width, height, buckets)
        if crop_fraction(width, height, bucket) > max_crop + 1e-9:
            misfits.append(f"{names[k] if names else k} ({width}x{height})")
        chosen.append(bucket)
    if misfits:
        widest = buckets[-1]
        raise DLAInputError(
            f"{len(misfits)} target image(s) fit no aspect bucket: {', '.join(misfits[:5])}"
            f"{' ...' if len(misfits) > 5 else ''}. The buckets at data.resolution {resolution} go from "
            f"{buckets[0][0]}x{buckets[0][1]} to {widest[0]}x{widest[1]} (data.max_aspect {max_aspect}), and an image "
            f"may lose at most data.max_crop = {max_crop:.0%} of its side to the crop. Crop those images nearer to "
            "their subject, remove them from the manifest, or raise data.max_aspect / data.max_crop."
        )
    return chosen


def bucket_histogram(buckets: Sequence[tuple[int, int] | None]) -> dict[tuple[int, int], int]:
    """Samples per bucket, in bucket order."""
    counts: dict[tuple[int, int], int] = {}
    for bucket in buckets:
        if bucket is not None:
            counts[tuple(bucket)] = counts.get(tuple(bucket), 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (item[0][0] / item[0][1], item[0][0])))


class BucketBatchSampler(torch.utils.data.Sampler):
    """Endless stream of micro-batches (lists of sample indices), each from one bucket.

    Epoch ``e``: with a generator seeded ``seed + e``, the samples of each bucket are shuffled and cut
    into global batches of ``batch_size * world``; the batches of all buckets are shuffled together.
    Every sample appears once per epoch; a bucket's last global batch may be smaller, and where it
    holds fewer samples than there are processes it is topped up from the same bucket (repeats), so
    that every process gets at least one sample. Process ``rank`` takes ``global_batch[rank::world]``.
    ``buckets[i]`` is sample ``i``'s bucket, ``None`` to leave it out (held-out validation samples).
    ``start_batch``: global batches already consumed (resume); the stream continues exactly there.
    """

    def __init__(
        self,
        buckets: Sequence[tuple[int, int] | None],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
    ):
        super().__init__()
        self.groups: dict[tuple, list[int]] = {}
        for index, bucket in enumerate(buckets):
            if bucket is not None:
                self.groups.setdefault(tuple(bucket), []).append(index)
        if not self.groups:
            raise DLAInputError("No training samples left (every sample is held out for validation).")
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world, self.start_batch = rank, world, start_batch
        global_size = batch_size * world
        self.batches_per_epoch = sum(math.ceil(len(m) / global_size) for m in self.groups.values())

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of epoch ``epoch`` in stream order."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        global_size = self.batch_size * self.world
        batches = []
        for key in sorted(self.groups):
            members = self.groups[key]
            order = [members[int(i)] for i in torch.randperm(len(members), generator=generator)]
            for start in range(0, len(order), global_size):
                chunk = order[start : start + global_size]
                chunk += [order[i % len(order)] for i in range(max(0, self.world - len(chunk)))]
                batches.append(chunk)
        shuffle = torch.randperm(len(batches), generator=generator)
        return [batches[int(i)] for i in shuffle]

    def __iter__(self):
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            for batch in self.epoch_batches(epoch)[offset:]:
                yield batch[self.rank :: self.world]
            epoch, offset = epoch + 1, 0


def manifest_buckets(records, data) -> list[tuple[int, int]]:
    """The bucket of every manifest record's target (``data``: the config's ``data`` section)."""
    from PIL import Image

    sizes = []
    for record in records:
        if record.target_size is None:
            with Image.open(record.target) as image:  # header only
                sizes.append(image.size)
        else:
            sizes.append(record.target_size)
    names = [f"line {r.index + 1} target {r.target}" for r in records]
    return assign_buckets(sizes, data.resolution, data.aspect_buckets, data.max_aspect, data.max_crop, names)
