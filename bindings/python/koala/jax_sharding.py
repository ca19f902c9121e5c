"""How a sharded parameter tree sits on a device mesh, as koala.jax's
handlers need to know it (static facts, fixed when the state is made).

Every device runs libkoala's sharded optimizer (koala_create_sharded) on its
own pieces of the tensors: piece i of a device is its block of parameter i
under the leaf's PartitionSpec. The partial sums of all pieces are summed
over the whole mesh (lax.psum over every mesh axis), so each element of the
model must be counted exactly once: where a tensor is replicated over a mesh
axis (a bias left unsharded, or every tensor over a pure data-parallel
axis), only the device at coordinate 0 of those axes "contributes" its
piece; the others update their replica identically (the filter is global)
without counting it (step_spec.h, DeviceSplit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def _axes_of(entry):
    """The mesh axes one PartitionSpec entry shards a dimension over."""
    if entry is None:
        return ()
    if isinstance(entry, (tuple, list)):
        return tuple(entry)
    return (entry,)


@dataclass(frozen=True)
class MeshLayout:
    """The static sharding of a parameter tree (hashable: it is part of the
    state's tree structure)."""
    mesh: Mesh
    specs: tuple            # per leaf, a PartitionSpec of len(shape) entries
    global_shapes: tuple
    local_shapes: tuple
    contributes: tuple      # rows x leaves, 1 where that device's piece is counted
    device_rows: tuple      # XLA device ordinal -> row of the mesh (-1: not in it)

    @property
    def rows(self) -> int:
        return self.mesh.size

    @property
    def axis_names(self) -> tuple:
        return tuple(self.mesh.axis_names)

    def local_sizes(self):
        return tuple(int(math.prod(s)) for s in self.local_shapes)

    def global_elements(self) -> int:
        return int(sum(math.prod(s) for s in self.global_shapes))

    def scalar_spec(self) -> PartitionSpec:
        """The scalar block: one row per device, over every mesh axis."""
        return PartitionSpec(self.axis_names)

    def scalar_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, self.scalar_spec())

    def param_shardings(self):
        return tuple(NamedSharding(self.mesh, s) for s in self.specs)


def _device_ordinal(device) -> int:
    """The device ordinal XLA hands an FFI handler (DeviceOrdinal) on this
    device: the device's index among its process's devices of its kind."""
    hw = getattr(device, "local_hardware_id", None)
    return int(hw) if hw is not None else int(device.id)


def make_layout(mesh: Mesh, specs, shapes, what="params") -> MeshLayout | None:
    """A MeshLayout, or None when no leaf is sharded (then every device holds
    every tensor whole and runs the plain optimizer)."""
    names = tuple(mesh.axis_names)
    norm_specs, local_shapes = [], []
    for i, (spec, shape) in enumerate(zip(specs, shapes)):
        spec = PartitionSpec() if spec is None else spec
        entries = tuple(spec) + (None,) * (len(shape) - len(spec))
        if len(entries) > len(shape):
            raise ValueError(f"koala.jax: {what} leaf {i} has shape {shape} but PartitionSpec "
                             f"{spec} has {len(spec)} entries")
        local = []
        for d, (entry, size) in enumerate(zip(entries, shape)):
            axes = _axes_of(entry)
            for a in axes:
                if a not in names:
                    raise ValueError(f"koala.jax: {what} leaf {i}: mesh axis {a!r} of "
                                     f"PartitionSpec {spec} is not in the mesh {names}")
            parts = int(math.prod(mesh.shape[a] for a in axes))
            if size % parts:
                raise ValueError(f"koala.jax: {what} leaf {i}: dimension {d} of shape {shape} "
                                 f"does not divide into {parts} shards (PartitionSpec {spec})")
            local.append(size // parts)
        norm_specs.append(PartitionSpec(*entries))
        local_shapes.append(tuple(local))
    if all(tuple(l) == tuple(s) for l, s in zip(local_shapes, shapes)):
        return None

    coords = list(np.ndindex(*mesh.devices.shape))  # row r -> mesh coordinate
    contributes = []
    for coord in coords:
        for spec in norm_specs:
            used = {a for entry in spec for a in _axes_of(entry)}
            replicated = [k for k, a in enumerate(names) if a not in used]
            contributes.append(int(all(coord[k] == 0 for k in replicated)))
    # Device ordinals are per process: the table covers this process's devices.
    import jax
    here = jax.process_index()
    local = [(r, _device_ordinal(d)) for r, d in enumerate(mesh.devices.flat)
             if getattr(d, "process_index", 0) == here]
    rows = [-1] * (max([o for _, o in local] + [0]) + 1)
    for r, o in local:
        rows[o] = r
    return MeshLayout(mesh, tuple(norm_specs), tuple(tuple(s) for s in shapes),
                      tuple(local_shapes), tuple(contributes), tuple(rows))


def layout_from_arrays(leaves, what="params") -> MeshLayout | None:
    """The MeshLayout of concrete jax.Arrays placed with one NamedSharding
    mesh; None for single-device or fully replicated trees."""
    meshes, specs = set(), []
    for i, leaf in enumerate(leaves):
        sharding = getattr(leaf, "sharding", None)
        if sharding is None or len(getattr(sharding, "device_set", ())) <= 1:
            specs.append(None)
            continue
        if not isinstance(sharding, NamedSharding):
            if sharding.is_fully_replicated:
                specs.append(None)
                continue
            raise ValueError(f"koala.jax: {what} leaf {i} is sharded with a "
                             f"{type(sharding).__name__}; koala.jax follows NamedSharding "
                             "(jax.sharding.Mesh + PartitionSpec) or explicit mesh=/specs=")
        meshes.add(sharding.mesh)
        specs.append(sharding.spec)
    if not meshes:
        return None
    if len(meshes) > 1:
        raise ValueError(f"koala.jax: {what} are placed on {len(meshes)} different meshes; "
                         "one optimizer state needs one mesh")
    mesh = meshes.pop()
    return make_layout(mesh, specs, [tuple(leaf.shape) for leaf in leaves], what)
