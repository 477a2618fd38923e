"""Rollouts on Ray, with the TF-free runtime as the actor (``pip install 'policy-toolkit[ray]'``).

* ``cluster.connect(address)``: joins a Ray cluster, or starts a local one on loopback
  (``"local"``), and leaves it at the end.
* ``evaluation.evaluate(bundle, env_id, episodes, seed, workers)``: seeded episodes
  played by Ray actors that load the bundle with the onnx backend; the per-episode
  returns are a local run's.
* ``collection.DistributedCollector``: experience collection for
  ``toolkit.agents.training.train_off_policy(actors=K)``.

Importing this package imports neither Ray nor TensorFlow; the actors
(``toolkit.distributed.actors``) never import TensorFlow.
"""
