"""Scale benchmark: thousands of real gateway tunnels against one relay (issue 8, item 3).

``swarm`` runs simulated gateways (the product's own tunnel service, each with its own
certificate) in a few worker processes; ``run`` starts a real relay, a real gateway with an
engineer client, and measures memory and CPU per idle gateway and a reconnect storm.
"""
