"""The competitor of serve_bench.py: Seldon MLServer serving policy.onnx with onnxruntime.

A custom MLServer runtime, as a user would write one for a bundle's ``policy.onnx``:
decode the observation (NumpyCodec), fill in the rest of the time step (step type MID,
reward 0, discount 1), run the session, answer the action. It runs in MLServer's own
virtualenv (serve_bench.py's ``--mlserver-python``), never in the project's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxPolicy(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        observation = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        batch = observation.shape[0]
        feeds = {
            "observation": observation,
            "step_type": np.ones(batch, np.int32),
            "reward": np.zeros(batch, np.float32),
            "discount": np.ones(batch, np.float32),
        }
        action = self.session.run(["action"], feeds)[0]
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("action", action)]
        )
