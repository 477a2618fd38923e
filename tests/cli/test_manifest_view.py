"""inspect's manifest view: every value the schema admits is shown, none crashes it."""

from __future__ import annotations

import copy

import pytest
from rich.console import Console

from tests.toolkit.manifests import MINIMAL
from toolkit.bundle import manifest as manifest_lib
from toolkit.bundle.layout import Layout
from toolkit.cli.manifest_view import render_manifest


def _shown(manifest: dict) -> str:
    manifest_lib.validate(manifest)  # a manifest a reader accepts
    console = Console(width=200, record=True)
    for renderable in render_manifest(Layout.of(manifest), "b"):
        console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize(
    "returns, shown",
    [
        ({"quantized_return": 12.0, "float_return": 20.0}, "mean return 12.0 (float 20.0)"),
        # The schema lets either be null: a float return of null was a TypeError.
        ({"quantized_return": 12.0, "float_return": None}, "mean return 12.0 on"),
        ({"quantized_return": None, "float_return": None}, "on 512 real states"),
    ],
)
def test_quantized_returns_are_shown_as_far_as_they_are_known(returns, shown):
    manifest = copy.deepcopy(MINIMAL)
    manifest["files"] = {
        name: {"sha256": "0" * 64, "size": 1}
        for name in ("policy.onnx", "saved_model/saved_model.pb")
    }
    manifest["quantization"] = {
        "target": "onnx", "method": "gptq", "weight_type": "int8", "action_agreement": 0.99,
        "states": 512, "tolerance": 0.01, **returns,
    }  # fmt: skip
    text = " ".join(_shown(manifest).split())
    assert shown.split(" on")[0] in text
    assert "action agreement 99.0% on 512 real states" in text
