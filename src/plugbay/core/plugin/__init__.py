"""The plugin side: serve(), the listener, health, the controller, stdio capture, hclog output.

Imports: errors, protocol, transport and broker; never host, resilience or runners (a plugin stays light).
"""
