"""The sparse checkpoint file.

Layout: 8-byte magic, 8-byte little-endian header length, a JSON header (format, sha256 and size of
the payload), then the payload: a `torch.save` blob holding, for each masked tensor, its kept
values and a packed bitmask; every other tensor as it is; and the config, measured density and
per-layer nonzero counts. The checksum is verified before the payload is unpickled, and the payload
is read with `weights_only=True`.
"""
import hashlib
import io
import json
import os
import struct
from pathlib import Path

import torch

from trainables.sparsity.enforce import check_density
from trainables.sparsity.layers import SparsityError
from trainables.sparsity.patterns import UNSTRUCTURED, check_nm, parse_pattern

MAGIC = b"SFKDSPR1"
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.flatten().cpu().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    return (flat.view(-1, 8) * _BITS).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= int(s)
    bits = (packed[:, None] & _BITS).ne(0).flatten()[:n]
    return bits.view(*shape)


def _group_by_dtype(tensors: dict[str, torch.Tensor]) -> dict:
    """Unmasked tensors (BN statistics, biases) joined into one flat tensor per dtype, same values."""
    flat, layout = {}, {}
    for name, t in tensors.items():
        key = str(t.dtype).removeprefix("torch.")
        flat.setdefault(key, []).append(t.reshape(-1))
        layout[name] = [key, list(t.shape)]
    return {"flat": {k: torch.cat(v) for k, v in flat.items()}, "layout": layout}


def _ungroup(grouped: dict) -> dict[str, torch.Tensor]:
    out, at = {}, {}
    for name, (key, shape) in grouped["layout"].items():
        n = torch.Size(shape).numel()
        start = at.get(key, 0)
        out[name] = grouped["flat"][key][start:start + n].reshape(shape).clone()
        at[key] = start + n
    return out


def save_sparse(path, state_dict: dict, masks: dict[str, torch.Tensor], scheduled_density: float,
                config: dict | None = None, extra: dict | None = None, dense_weights: int | None = None) -> dict:
    """Write `state_dict` sparsely. `scheduled_density`, the density the pruning schedule has reached
    (the target once it is done), is asserted against the masks first and recorded beside the measured
    one. `dense_weights`: for a channel-pruned student, the maskable weights of the network it was pruned
    from, which its density is a fraction of. Returns the header (with sizes and counts)."""
    measured = check_density(state_dict, masks, scheduled_density, dense_weights)
    _check_pattern(config or {}, masks, state_dict)
    # Masked tensors go into one flat value tensor and one flat bitmask: a record per tensor in the
    # zip container would cost more than the bitmask itself for small layers.
    values, bitmasks, shapes, dense = [], [], {}, {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        if name in masks:
            m = masks[name].cpu()
            values.append(t[m])
            bitmasks.append(pack_bits(m))
            shapes[name] = list(t.shape)
        else:
            dense[name] = t
    nnz = {k: int(masks[k].sum()) for k in shapes}
    payload = {
        "values": torch.cat(values) if values else torch.zeros(0),
        "bitmasks": torch.cat(bitmasks) if bitmasks else torch.zeros(0, dtype=torch.uint8),
        "shapes": shapes, "dense": _group_by_dtype(dense),
        "config": config or {}, "scheduled_density": float(scheduled_density), "measured_density": measured,
        "nnz": nnz, "extra": extra or {},
    }
    if dense_weights:
        payload["dense_weights"] = int(dense_weights)
    buf = io.BytesIO()
    torch.save(payload, buf)
    blob = buf.getvalue()
    header = {"format": "sfkd-sparse-v1", "sha256": hashlib.sha256(blob).hexdigest(), "payload_bytes": len(blob),
              "scheduled_density": float(scheduled_density), "measured_density": measured,
              "nonzero_params": sum(nnz.values())}
    head = json.dumps(header).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(head)) + head + blob)
    os.replace(tmp, path)  # never leave a half-written checkpoint under the real name
    return header


def _check_pattern(config: dict, masks: dict, weights: dict) -> None:
    """The pattern the config names holds exactly, in the masks and in the stored weights."""
    nm = parse_pattern(config.get("sparsity_pattern", UNSTRUCTURED))
    if nm is not None:
        check_nm(masks, *nm, weights)


def read_header(path) -> tuple[dict, bytes]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SparsityError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if raw[:8] != MAGIC or len(raw) < 16:
        raise SparsityError(f"{path} is not an sfkd sparse checkpoint (bad magic bytes)")
    (hlen,) = struct.unpack("<Q", raw[8:16])
    try:
        header = _renamed(json.loads(raw[16:16 + hlen]))
    except (ValueError, UnicodeDecodeError):
        raise SparsityError(f"{path}: checkpoint header is corrupt") from None
    blob = raw[16 + hlen:]
    if len(blob) != header.get("payload_bytes") or hashlib.sha256(blob).hexdigest() != header.get("sha256"):
        raise SparsityError(f"{path}: checkpoint checksum does not match (truncated or tampered file)")
    return header, blob


def _renamed(record: dict) -> dict:
    """Files written before the scheduled density had its own name called it `density`."""
    if "density" in record and "scheduled_density" not in record:
        record["scheduled_density"] = record.pop("density")
    return record


def load_sparse(path, expect_density: float | None = None) -> tuple[dict, dict, dict]:
    """(dense state_dict with zeros in place, masks, payload metadata). Refuses a file whose
    checksum fails or whose density differs from its own record or from `expect_density`."""
    _, blob = read_header(path)
    # A checksum is not a signature: the payload's content is checked as well before it is used.
    try:
        payload = _renamed(torch.load(io.BytesIO(blob), weights_only=True))
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise SparsityError(f"{path}: checkpoint payload cannot be read ({type(e).__name__})") from None
    _check_payload(path, payload)
    try:
        state, masks = _ungroup(payload["dense"]), {}
        values, bits = payload["values"], payload["bitmasks"]
        v_at = b_at = 0
        for name, shape in payload["shapes"].items():
            numel = torch.Size(shape).numel()
            n_bytes = (numel + 7) // 8
            m = unpack_bits(bits[b_at:b_at + n_bytes], shape)
            k = payload["nnz"][name]
            t = torch.zeros(shape, dtype=values.dtype)
            t[m] = values[v_at:v_at + k]
            state[name], masks[name] = t, m
            v_at, b_at = v_at + k, b_at + n_bytes
    except (RuntimeError, ValueError, IndexError, KeyError, TypeError) as e:
        raise SparsityError(f"{path}: checkpoint payload is inconsistent ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    density = payload["scheduled_density"] if expect_density is None else float(expect_density)
    try:
        check_density(state, masks, density, payload.get("dense_weights"))
    except SparsityError as e:
        raise SparsityError(f"{path}: {e}") from None
    try:
        _check_pattern(payload["config"], masks, state)
    except SparsityError as e:
        raise SparsityError(f"{path}: {e}") from None
    meta = {k: payload[k] for k in ("config", "scheduled_density", "measured_density", "nnz", "extra")}
    meta["dense_weights"] = payload.get("dense_weights")
    return state, masks, meta


PAYLOAD_KEYS = {"values": torch.Tensor, "bitmasks": torch.Tensor, "shapes": dict, "dense": dict, "config": dict,
                "scheduled_density": float, "measured_density": float, "nnz": dict, "extra": dict}


def _check_payload(path, payload) -> None:
    """The payload is a dict of the expected keys and types, its shapes and counts agree with each
    other, and its values are finite: or one line naming the file and what is wrong."""
    if not isinstance(payload, dict):
        raise SparsityError(f"{path}: checkpoint payload is a {type(payload).__name__}, not the expected mapping")
    for key, kind in PAYLOAD_KEYS.items():
        if not isinstance(payload.get(key), kind):
            raise SparsityError(f"{path}: checkpoint payload has no valid {key!r} (expected {kind.__name__})")
    dense = payload["dense"]
    if not isinstance(dense.get("flat"), dict) or not isinstance(dense.get("layout"), dict):
        raise SparsityError(f"{path}: checkpoint payload's 'dense' part lacks its flat tensors or layout")
    shapes, nnz = payload["shapes"], payload["nnz"]
    for name, shape in shapes.items():
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise SparsityError(f"{path}: checkpoint payload: tensor {name} has no valid shape ({shape!r})")
        if not isinstance(nnz.get(name), int) or not 0 <= nnz[name] <= torch.Size(shape).numel():
            raise SparsityError(f"{path}: checkpoint payload: tensor {name} has no valid nonzero count")
    if payload["values"].numel() != sum(nnz[n] for n in shapes):
        raise SparsityError(f"{path}: checkpoint payload holds {payload['values'].numel()} kept values, its counts "
                            f"say {sum(nnz[n] for n in shapes)}")
    dense_weights = payload.get("dense_weights")
    if dense_weights is not None and not (isinstance(dense_weights, int) and dense_weights > 0):
        raise SparsityError(f"{path}: checkpoint payload has no valid 'dense_weights' ({dense_weights!r})")
    if payload["values"].is_floating_point() and not torch.isfinite(payload["values"]).all():
        raise SparsityError(f"{path}: checkpoint holds weights that are not finite (nan or inf)")


def to_dense_state_dict(path, out) -> None:
    """Export a sparse checkpoint as a plain dense state_dict file (zeros in place)."""
    state, _, _ = load_sparse(path)
    torch.save(state, out)
