"""What `sdcli info` reports about a converted model: its components, sizes and weight types."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sdcli.model.layout import IR_COMPONENTS
from sdcli.util.errors import UsageError



def _weight_types(xml: Path) -> str:
    """The element types of the IR's weight constants, largest share first (e.g. "f16 98%, f32 2%")."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    sizes: Counter = Counter()
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            shape = op.get_output_shape(0)
            n = 1
            for d in shape:
                n *= d
            sizes[op.get_output_element_type(0).get_type_name()] += n * op.get_output_element_type(0).bitwidth // 8
    total = sum(sizes.values()) or 1
    return ", ".join(f"{t} {100 * v / total:.0f}%" for t, v in sizes.most_common() if v / total >= 0.01)


def describe_model(root: Path) -> dict:
    root = Path(root)
    if not (root / "model_index.json").is_file():
        raise UsageError(f"{root} is not a converted model folder (no model_index.json)")
    components = []
    for name in IR_COMPONENTS:
        xml = root / name / "openvino_model.xml"
        if not xml.is_file():
            continue
        size = sum(f.stat().st_size for f in (root / name).glob("openvino_model.*"))
        components.append({"name": name, "size_mb": size / 1e6, "weights": _weight_types(xml)})
    meta = root / "sdcli.json"
    weight_format = json.loads(meta.read_text()).get("weight_format") if meta.is_file() else None
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return {"path": str(root), "total_mb": total / 1e6, "weight_format": weight_format, "components": components,
            **generation_defaults(root)}


def generation_defaults(root: Path) -> dict:
    """What `generate` runs the folder with when no flag says otherwise: "defaults", the steps,
    guidance and VAE its sdcli.json sets (checked; {} when none), and "scheduler", its own scheduler and
    timestep spacing (scheduler_config.json's)."""
    from sdcli.model.config_checks import read_json
    from sdcli.model.defaults import read_defaults

    scheduler = read_json(root / "scheduler" / "scheduler_config.json", required=False) or {}
    return {"defaults": read_defaults(root).as_dict(),
            "scheduler": {"class": scheduler.get("_class_name"), "timestep_spacing": scheduler.get("timestep_spacing")}}
