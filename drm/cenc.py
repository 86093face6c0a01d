"""Sample encryption per ISO/IEC 23001-7 (Common Encryption, 3rd edition): `cenc` and `cbcs`.

`cenc`: AES-128-CTR. Each sample has its own IV (8 bytes by default, random start, +1 per
sample as the standard recommends; a 16-byte IV advances by the sample's block count, as Shaka
Packager does). The protected bytes of all subsamples of a sample form one keystream.

`cbcs`: AES-128-CBC with one constant IV per track, restarted at every subsample's protected
range. Video uses the 1:9 pattern (encrypt one 16-byte block, leave nine clear), audio
whole-block encryption (pattern 0:0: every full block); a trailing partial block stays clear.

Video is subsample-encrypted NAL unit by NAL unit: non-VCL units stay clear, a VCL unit
keeps its length field, NAL header and slice header clear (`drm.h26x` measures the slice
header). The protected range starts at the first byte after the slice header; with `cenc` it
is cut to a multiple of 16 bytes (CMAF) and the unaligned tail of the NAL unit stays clear,
counted with the next subsample's clear bytes: the layout Shaka Packager 3.8 writes, byte for
byte. Audio (AAC, AC-3, E-AC-3) has no subsamples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from Crypto.Cipher import AES

from drm import boxes, h26x
from drm.keys import ContentKey

log = logging.getLogger(__name__)

VIDEO_CODECS = {"avc1": "h264", "avc3": "h264", "hvc1": "h265", "hev1": "h265"}
AUDIO_CODECS = {"mp4a", "ac-3", "ec-3"}
SCHEMES = ("cenc", "cbcs")
MAX_CLEAR = 0xFFFF  # a subsample's clear byte count is a 16-bit field
BLOCK = 16


class CencError(ValueError):
    """A sample cannot be encrypted (malformed NAL units, unsupported coding feature)."""


@dataclass(frozen=True)
class EncryptedSample:
    """An encrypted sample and its auxiliary information for `senc`.

    `iv` is the per-sample IV (`b""` with a constant IV), `subsamples` the
    (clear bytes, protected bytes) pairs covering the whole sample (empty: whole-sample
    encryption, as for audio).
    """

    data: bytes
    iv: bytes
    subsamples: tuple[tuple[int, int], ...] = ()


class SampleEncryptor:
    """Encrypts the samples of one track, in decode order, with one content key.

    `codec` is the sample entry type: `avc1`/`avc3`, `hvc1`/`hev1`, `mp4a`, `ac-3`,
    `ec-3`. Video samples are length-prefixed NAL units (`nal_length_size`, else the one in
    the avcC/hvcC `parameter_sets`, else 4); `parameter_sets` is the decoder configuration
    (avcC/hvcC record or Annex B SPS/PPS), and parameter sets found in samples update it.
    `iv` sets the starting IV (cenc) or the constant IV (cbcs). Without it, cbcs uses the
    key's IV, else a random 16-byte one; cenc a random 8-byte one, never the key's: two
    AES-CTR tracks under one key starting at one IV would share keystream.
    """

    def __init__(
        self,
        scheme: str,
        key: ContentKey,
        codec: str,
        *,
        nal_length_size: int | None = None,
        parameter_sets: bytes = b"",
        iv: bytes | None = None,
    ):
        scheme = str(scheme)
        if scheme not in SCHEMES:
            raise CencError(f"unknown protection scheme {scheme!r}; expected cenc or cbcs")
        if codec not in VIDEO_CODECS and codec not in AUDIO_CODECS:
            raise CencError(f"cannot encrypt codec {codec!r}")
        self.scheme = scheme
        self.codec = codec
        self.key_id = key.key_id
        self._key = key.key
        self.is_video = codec in VIDEO_CODECS
        start_iv = iv if iv is not None else (key.iv if scheme == "cbcs" else None)
        if start_iv is not None and len(start_iv) not in (8, 16):
            raise CencError(f"an IV must be 8 or 16 bytes, not {len(start_iv)}")
        if scheme == "cenc":
            self._next_iv = start_iv if start_iv is not None else os.urandom(8)
            self.constant_iv: bytes | None = None
            self.crypt_byte_block, self.skip_byte_block = 0, 0
        else:
            self._next_iv = b""
            self.constant_iv = start_iv if start_iv is not None else os.urandom(16)
            # Video: the 1:9 pattern; other tracks: every full block (signalled 0:0).
            self.crypt_byte_block, self.skip_byte_block = (1, 9) if self.is_video else (0, 0)
        self._chain: _ChainedCbc | None = None  # cbcs: one cipher for every range of the track
        self._keystream: _CtrKeystream | None = None  # cenc: one cipher for every sample
        self._parser: h26x.H264Parser | h26x.H265Parser | None = None
        self.nal_length_size = 0
        if self.is_video:
            hevc = VIDEO_CODECS[codec] == "h265"
            self._parser = h26x.H265Parser() if hevc else h26x.H264Parser()
            try:
                config_size, units = h26x.config_nal_units(parameter_sets, hevc)
                for unit in units:
                    self._parser.process(unit)
            except h26x.BitstreamError as error:
                raise CencError(f"decoder configuration: {error}") from None
            self.nal_length_size = nal_length_size or config_size or 4
        self.samples_encrypted = 0

    def __repr__(self) -> str:
        return (
            f"SampleEncryptor(scheme={self.scheme!r}, codec={self.codec!r}, "
            f"key_id={self.key_id}, key=<hidden>)"
        )

    # -- what the packager needs for the boxes ---------------------------------------------

    @property
    def per_sample_iv_size(self) -> int:
        """8 or 16 for cenc; 0 for cbcs (constant IV)."""
        return len(self._next_iv)

    @property
    def uses_subsamples(self) -> bool:
        """Whether `senc` entries carry subsamples (video) or not (audio)."""
        return self.is_video

    @property
    def sample_entry_type(self) -> str:
        """The protected sample entry type: `encv` or `enca`."""
        return "encv" if self.is_video else "enca"

    def sinf(self, original_format: str | None = None) -> bytes:
        """The `sinf` box for this track's protected sample entry."""
        return boxes.sinf(
            original_format or self.codec,
            self.scheme,
            self.key_id,
            self.per_sample_iv_size,
            self.constant_iv,
            self.crypt_byte_block,
            self.skip_byte_block,
        )

    # -- encryption --------------------------------------------------------------------------

    def encrypt(self, sample: bytes) -> EncryptedSample:
        """Encrypt one sample (decode order matters: per-sample IVs and in-band parameter
        sets carry over to the next samples)."""
        subsamples = self.subsamples(sample) if self.is_video else ()
        iv = self._next_iv
        if self.scheme == "cenc":
            if self._keystream is None:
                self._keystream = _CtrKeystream(self._key)
            data, protected = _ctr(self._key, iv, sample, subsamples, self._keystream)
            self._next_iv = _advance_iv(iv, protected)
        else:
            assert self.constant_iv is not None, "cbcs always has a constant IV"
            if self._chain is None:
                self._chain = _ChainedCbc(self._key, self.constant_iv)
            data = _cbcs(
                self._key,
                self.constant_iv,
                sample,
                subsamples,
                self.crypt_byte_block,
                self.skip_byte_block,
                chain=self._chain,
            )
        self.samples_encrypted += 1
        return EncryptedSample(data, iv, tuple(subsamples))

    def subsamples(self, sample: bytes) -> list[tuple[int, int]]:
        """The (clear, protected) layout of a video sample (also updates the parameter sets
        from SPS/PPS NAL units inside it)."""
        assert self._parser is not None
        parser, length_size = self._parser, self.nal_length_size
        view = memoryview(sample)
        layout: list[tuple[int, int]] = []
        pending = 0  # clear bytes waiting for the next protected range
        try:
            units = h26x.split_length_prefixed(sample, length_size)
            for offset, size in units:
                nal = view[offset : offset + size]
                protected = 0
                if size and parser.is_vcl(nal):
                    protected = size - min(size, h26x.slice_data_offset(parser, nal))
                elif size:
                    parser.process(nal)
                clear = length_size + size - protected
                # cenc: protect whole blocks from the first byte after the slice header; the
                # unaligned tail stays clear (joins the next subsample's clear bytes).
                tail = protected % BLOCK if self.scheme == "cenc" else 0
                protected -= tail
                pending += clear
                if protected:
                    layout.extend(_split_clear(pending, protected))
                    pending = 0
                pending += tail
        except h26x.BitstreamError as error:
            raise CencError(f"sample {self.samples_encrypted} ({self.codec}): {error}") from None
        if pending or not layout:
            layout.extend(_split_clear(pending, 0))
        return layout


def _split_clear(clear: int, protected: int) -> list[tuple[int, int]]:
    """One subsample, preceded by clear-only ones while the clear count exceeds 16 bits."""
    entries = []
    while clear > MAX_CLEAR:
        entries.append((MAX_CLEAR, 0))
        clear -= MAX_CLEAR
    entries.append((clear, protected))
    return entries


def protected_ranges(size: int, subsamples: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, length) of each protected range; the whole sample when no subsamples."""
    if not subsamples:
        return [(0, size)]
    ranges, position = [], 0
    for clear, protected in subsamples:
        position += clear
        if protected:
            ranges.append((position, protected))
        position += protected
    if position != size:
        raise CencError(f"subsamples cover {position} bytes of a {size}-byte sample")
    return ranges


def _ctr_cipher(key: bytes, iv: bytes):
    if len(iv) == 8:  # counter block: IV (8 bytes) then a 64-bit block counter
        return AES.new(key, AES.MODE_CTR, nonce=iv, initial_value=0)
    return AES.new(key, AES.MODE_CTR, nonce=b"", initial_value=iv)  # the IV is the counter


class _CtrKeystream:
    """AES-CTR with 8-byte IVs from one AES-ECB cipher per track instead of a CTR cipher per
    sample (the key schedule is the costly part): counter block i of a sample is its IV
    followed by i as a 64-bit big-endian number, as in _ctr_cipher."""

    def __init__(self, key: bytes):
        self._ecb = AES.new(key, AES.MODE_ECB)

    def apply(self, iv: bytes, data: bytearray) -> None:
        """XOR the keystream of `iv` into `data` in place."""
        blocks = -(-len(data) // BLOCK)
        counters = np.empty((blocks, 2), dtype=">u8")
        counters[:, 0] = int.from_bytes(iv, "big")
        counters[:, 1] = np.arange(blocks, dtype=np.uint64)
        plain = counters.view(np.uint8).reshape(-1)
        stream = np.frombuffer(self._ecb.encrypt(plain.data), dtype=np.uint8)
        target = np.frombuffer(data, dtype=np.uint8)
        target ^= stream[: len(data)]


def _ctr(
    key: bytes,
    iv: bytes,
    sample: bytes,
    subsamples: Sequence[tuple[int, int]],
    keystream: _CtrKeystream | None = None,
) -> tuple[bytes, int]:
    """cenc: one keystream over the concatenated protected ranges. Returns the data and the
    number of protected bytes. Encryption and decryption are the same operation. `keystream`
    (8-byte IVs) is the track's cipher reused across samples; without it, a cipher per call."""
    ranges = protected_ranges(len(sample), subsamples)
    out = bytearray(sample)
    protected = b"".join(sample[s : s + n] for s, n in ranges)
    if keystream is not None and len(iv) == 8:
        stream = bytearray(protected)
        keystream.apply(iv, stream)
    else:
        stream = _ctr_cipher(key, iv).encrypt(protected)
    position = 0
    for start, length in ranges:
        out[start : start + length] = stream[position : position + length]
        position += length
    return bytes(out), position


def _advance_iv(iv: bytes, protected_bytes: int) -> bytes:
    """The next sample's IV: +1 for 8-byte IVs; + the block count for 16-byte IVs."""
    step = 1 if len(iv) == 8 else (protected_bytes + BLOCK - 1) // BLOCK
    bits = len(iv) * 8
    return ((int.from_bytes(iv, "big") + step) % (1 << bits)).to_bytes(len(iv), "big")


def _pattern_mask(blocks: int, crypt: int, skip: int) -> np.ndarray:
    if crypt == 0 and skip == 0:  # no pattern: every full block
        return np.ones(blocks, dtype=bool)
    return (np.arange(blocks) % (crypt + skip)) < crypt


def _pattern_blocks(view: np.ndarray, crypt: int, skip: int) -> np.ndarray:
    """The crypt blocks of an (n, 16) view for the 0:0 and 1:N patterns, as a strided view."""
    assert crypt == 1 or crypt == skip == 0
    return view if crypt == 0 else view[:: 1 + skip]


class _ChainedCbc:
    """AES-CBC encryption from one constant IV, restarted at every protected range, with one
    cipher object per track instead of one per range (the key schedule is the costly part).

    The cipher's chain continues from the last ciphertext block `c` of the previous range;
    XOR-ing `iv ^ c` into the range's first plaintext block makes its first step
    E(p0 ^ iv), exactly a CBC restarted from `iv`."""

    def __init__(self, key: bytes, iv: bytes):
        self._cipher = AES.new(key, AES.MODE_CBC, iv=bytes(BLOCK))
        self._iv = np.frombuffer(_cbc_iv(iv), dtype=np.uint8)
        self._last = np.zeros(BLOCK, dtype=np.uint8)  # the cipher's chaining block

    def encrypt(self, blocks: np.ndarray) -> np.ndarray:
        """CBC from the IV over `blocks` ((n, 16) uint8); the ciphertext as (n, 16)."""
        if not len(blocks):
            return blocks
        done = np.array(blocks, order="C")  # one copy (the blocks may be a strided view)
        done[0] ^= self._iv ^ self._last
        flat = done.reshape(-1)
        self._cipher.encrypt(flat.data, output=flat.data)  # in place: no new buffer
        self._last = done[-1].copy()
        return done


def _cbc_iv(iv: bytes) -> bytes:
    # An 8-byte constant IV is the first half of the CBC IV; the rest is zero (23001-7).
    return iv if len(iv) == 16 else iv + bytes(8)


def _cbcs(
    key: bytes,
    iv: bytes,
    sample: bytes,
    subsamples: Sequence[tuple[int, int]],
    crypt: int,
    skip: int,
    decrypt: bool = False,
    chain: _ChainedCbc | None = None,
) -> bytes:
    """cbcs: per protected range, AES-CBC from the constant IV over the pattern's crypt
    blocks (the chain skips the clear blocks); a partial last block stays clear. `chain`
    (encryption only) is the track's cipher reused across ranges; without it each range gets
    a fresh cipher."""
    out = bytearray(sample)
    array = np.frombuffer(out, dtype=np.uint8)
    cbc_iv = _cbc_iv(iv)
    for start, length in protected_ranges(len(sample), subsamples):
        blocks = length // BLOCK
        if not blocks:
            continue
        view = array[start : start + blocks * BLOCK].reshape(blocks, BLOCK)
        mask = None if crypt == 1 or crypt == skip == 0 else _pattern_mask(blocks, crypt, skip)
        if chain is not None and not decrypt:
            if mask is None:  # 1:N and 0:0 are strided views into `out`: encrypted in place
                chosen_view = _pattern_blocks(view, crypt, skip)
                chosen_view[...] = chain.encrypt(chosen_view)
            else:
                view[mask] = chain.encrypt(view[mask])
            continue
        mask = _pattern_mask(blocks, crypt, skip)
        chosen = view[mask]
        cipher = AES.new(key, AES.MODE_CBC, iv=cbc_iv)
        done = cipher.decrypt(chosen.tobytes()) if decrypt else cipher.encrypt(chosen.tobytes())
        view[mask] = np.frombuffer(done, dtype=np.uint8).reshape(-1, BLOCK)
    return bytes(out)


def decrypt_sample(
    scheme: str,
    key: bytes,
    sample: EncryptedSample,
    *,
    constant_iv: bytes | None = None,
    crypt_byte_block: int = 0,
    skip_byte_block: int = 0,
) -> bytes:
    """The clear sample back (checks and tests; players do this themselves)."""
    if str(scheme) == "cenc":
        return _ctr(key, sample.iv, sample.data, sample.subsamples)[0]
    iv = sample.iv or constant_iv
    if not iv:
        raise CencError("cbcs decryption needs the constant IV")
    return _cbcs(
        key, iv, sample.data, sample.subsamples, crypt_byte_block, skip_byte_block, decrypt=True
    )
