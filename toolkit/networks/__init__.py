"""Networks for TF policies: a ``tf.Module`` base and the usual Q, actor and critic nets.

Import the modules you need (``toolkit.networks.q_network`` ...); this file imports
nothing, so ``import toolkit.networks`` stays cheap.
"""
