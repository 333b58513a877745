"""``main()`` of every k4d node: build, spin, and stop cleanly on Ctrl-C / SIGTERM.

A SIGINT shuts the rclpy context down while a callback or a node thread may be publishing; such a
publish raises (``publisher's context is invalid``). That is a normal stop, not an error: the process
exits 0. A start-up error (bad parameter, missing file) is logged as fatal and exits 1.
"""
from __future__ import annotations

from typing import Callable


def run_node(factory: Callable[[], object], logger_name: str, args=None, threads: int = 1) -> int:
    """Build the node with ``factory`` and spin it (``threads`` > 1: a MultiThreadedExecutor) until shutdown."""
    import rclpy
    import rclpy.executors
    import rclpy.logging

    rclpy.init(args=args)
    try:
        node = factory()
    except (ValueError, OSError, RuntimeError) as exc:  # configuration errors: say which and stop
        rclpy.logging.get_logger(logger_name).fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 1
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    executor = (rclpy.executors.MultiThreadedExecutor(num_threads=threads) if threads > 1
                else rclpy.executors.SingleThreadedExecutor())
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - a publish racing the shutdown is a normal stop
        if rclpy.ok():
            raise
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
