"""What `sdcli info` reports about the runtime: OpenVINO's version and devices."""
from __future__ import annotations


def describe_runtime() -> dict:
    import openvino as ov

    core = ov.Core()
    devices = []
    for name in core.available_devices:
        entry = {"name": name, "full_name": "", "capabilities": []}
        try:
            entry["full_name"] = core.get_property(name, "FULL_DEVICE_NAME")
            entry["capabilities"] = list(core.get_property(name, "OPTIMIZATION_CAPABILITIES"))
        except RuntimeError:
            pass
        devices.append(entry)
    return {"openvino": ov.__version__.split("-")[0], "devices": devices}
