"""Named exit codes of ``omsd`` and ``omsctl``.

==================  =====  ====================================================
name                value  meaning
==================  =====  ====================================================
RET_OK                  0  success; ``omsd run`` stopped gracefully
RET_ERROR               1  generic failure (``omsctl``: daemon answered an error)
RET_USAGE               2  bad command line
RET_NOT_RUNNING         3  ``omsctl``: no daemon answers on the socket (LSB)
RET_WORKER_BOOT         4  a worker process failed to boot (import error in a
                           pipeline step, ...); the daemon halts instead of
                           restart-looping
RET_KILLED              5  forced stop (second SIGTERM/SIGINT): in-flight work
                           abandoned; offsets not committed past it
RET_REGISTRY_DAMAGED   65  the registry cannot be read (damaged, truncated,
                           overwritten, empty): one message names the file and
                           what to do; systemd must not restart (EX_DATAERR)
RET_LOCKED             75  another daemon holds the state directory
                           (EX_TEMPFAIL: retrying later may succeed)
RET_CONFIG             78  configuration invalid or unreadable (EX_CONFIG);
                           systemd must not restart (RestartPreventExitStatus)
==================  =====  ====================================================

``omsctl check`` uses its own LSB-style codes:

==================  =====  ======================================
CHECK_HEALTHY           0  daemon running and healthy
CHECK_DEGRADED          1  running but degraded (or not answering)
CHECK_NOT_RUNNING       3  no daemon on the control socket
==================  =====  ======================================
"""

RET_OK = 0
RET_ERROR = 1
RET_USAGE = 2
RET_NOT_RUNNING = 3
RET_WORKER_BOOT = 4
RET_KILLED = 5
RET_REGISTRY_DAMAGED = 65
RET_LOCKED = 75
RET_CONFIG = 78

CHECK_HEALTHY = 0
CHECK_DEGRADED = 1
CHECK_NOT_RUNNING = 3
