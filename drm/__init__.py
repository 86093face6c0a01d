"""DRM: content keys and key sources, CENC sample encryption, boxes and manifest signalling.

- `drm.keys`: `ContentKey`, `KeySet`, `keys_from_job` (Base64Key, Encrypted, Managed)
- `drm.cpix`: the CPIX (SPEKE v2 / v1) Key Service client
- `drm.cenc`: `SampleEncryptor` (cenc, cbcs) with `drm.h26x` measuring slice headers
- `drm.boxes`: `sinf`/`tenc`, `pssh` (the fragment boxes are the packager's)
- `drm.pssh`, `drm.signalling`: PSSH per DRM system, DASH `ContentProtection`, HLS key tags
- `drm.track`: `TrackEncryption`, everything one track needs, for the packager's hooks
- `drm.credentials`: the service key pair that protects secrets in jobs
"""
