"""QoS profiles chosen on purpose for k4d topics.

* Sensor streams (joint states, camera images, pointmaps): best-effort, keep-last 5, volatile, as
  rclpy's sensor-data profile. A late frame is worthless, and a best-effort subscriber also matches
  reliable publishers (real drivers use either), so our subscribers to sensor topics use it too.
* Plans and sequences: reliable, keep-last 5 (each plan matters; they are infrequent).
* /robot_description: reliable + transient-local, depth 1, as robot_state_publisher publishes it.
"""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

SENSOR_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                        reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
RELIABLE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                          reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
