"""cbcs with one cipher per track (drm.cenc._ChainedCbc) writes exactly what a fresh AES-CBC
per protected range writes, for every pattern and IV size, over many samples in a row."""

from __future__ import annotations

import random

from drm import cenc


def _subsamples(rng: random.Random, size: int) -> list[tuple[int, int]]:
    layout, left = [], size
    while left:
        clear = rng.randint(0, min(left, 300))
        protected = rng.randint(0, left - clear)
        layout.append((clear, protected))
        left -= clear + protected
    return layout


def test_chained_cipher_matches_a_fresh_cipher_per_range() -> None:
    rng = random.Random(18)
    key = rng.randbytes(16)
    for iv in (rng.randbytes(16), rng.randbytes(8)):
        chains = {p: cenc._ChainedCbc(key, iv) for p in ((1, 9), (0, 0), (2, 8), (1, 0))}
        for _ in range(150):
            sample = rng.randbytes(rng.randint(1, 4000))
            layout = _subsamples(rng, len(sample))
            for (crypt, skip), chain in chains.items():
                fresh = cenc._cbcs(key, iv, sample, layout, crypt, skip)
                chained = cenc._cbcs(key, iv, sample, layout, crypt, skip, chain=chain)
                assert chained == fresh
                assert cenc._cbcs(key, iv, chained, layout, crypt, skip, decrypt=True) == sample


def test_cenc_track_keystream_matches_a_ctr_cipher_per_sample() -> None:
    """cenc with one AES-ECB cipher per track (drm.cenc._CtrKeystream, 8-byte IVs) writes what
    an AES-CTR cipher made for each sample writes, whatever the sizes and subsample layouts."""
    rng = random.Random(19)
    key = rng.randbytes(16)
    keystream = cenc._CtrKeystream(key)
    for _ in range(300):
        iv = rng.randbytes(8)
        sample = rng.randbytes(rng.randint(1, 5000))
        layout = _subsamples(rng, len(sample))
        fresh = cenc._ctr(key, iv, sample, layout)
        assert cenc._ctr(key, iv, sample, layout, keystream) == fresh
        assert cenc._ctr(key, iv, fresh[0], layout, keystream)[0] == sample
