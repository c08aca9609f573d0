"""The Windows service: pywin32's pythonservice.exe hosts SensorService, which runs what `sensor run`
runs, with %ProgramData%\\sensor\\sensor.yaml as its config (the .msi registers both).

The host calls SvcDoRun on a thread of its own, where Python cannot install signal handlers, so
the pipeline is driven here with a stop flag that SvcStop sets, not through cli.cmd_run."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import servicemanager
import win32service
import win32serviceutil

from . import config
from .shutdown import StopFlag

PROGRAM_DATA = Path(os.environ.get("ProgramData", r"C:\ProgramData")) / "sensor"


class SensorService(win32serviceutil.ServiceFramework):
    _svc_name_ = "sensor"
    _svc_display_name_ = "Sensor (endpoint telemetry)"
    _svc_description_ = "Process, file and network events in one schema, Sigma rules, local store."

    def __init__(self, args):
        super().__init__(args)
        self.stop = StopFlag()

    def SvcStop(self):
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
        self.stop.set()

    def SvcDoRun(self):
        path = PROGRAM_DATA / "sensor.yaml"
        cfg = config.resolve(argparse.Namespace(config=str(path) if path.exists() else None))
        if cfg["data_dir"] == config.OPTIONS["data_dir"][1]:  # the Linux default means none was set
            cfg["data_dir"] = str(PROGRAM_DATA / "data")
        cfg["console"] = "off"
        logging.basicConfig(filename=str(PROGRAM_DATA / "sensor.log"), level=cfg["log_level"].upper(),
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        from .pipeline import Pipeline

        servicemanager.LogInfoMsg(f"sensor: storing events in {cfg['data_dir']}")
        Pipeline(cfg).start().run(self.stop, cfg["duration"])


if __name__ == "__main__":  # python -m sensor.winservice install|start|stop|remove (by hand, without the .msi)
    win32serviceutil.HandleCommandLine(SensorService)
