"""Live visualization: Foxglove messages and the Foxglove WebSocket server (ROS-free).

``foxglove_view`` converts images, markers, poses, wrenches and state text to Foxglove
messages and serves them; ``ir_guidance.nodes.live_view`` is the ROS adapter that feeds
it from the contract topics during ``ir-guidance sim --live`` (``docs/live_view.md``).
"""
