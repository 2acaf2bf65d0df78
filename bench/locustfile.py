"""Locust user and load shape for bench/load.py: each user posts one record to /predict in a loop
(no think time); the users step up from 1 to 50. The record comes from the JSON file named by
RAYGBM_LOAD_RECORD; the steps from RAYGBM_LOAD_STEPS ("users:seconds,...")."""

from __future__ import annotations

import json
import os

from locust import FastHttpUser, LoadTestShape, task

RECORD = json.loads(open(os.environ["RAYGBM_LOAD_RECORD"]).read()) if "RAYGBM_LOAD_RECORD" in os.environ else {}
STEPS = [tuple(int(x) for x in step.split(":"))
         for step in os.environ.get("RAYGBM_LOAD_STEPS", "1:15,5:15,10:15,20:15,30:15,40:15,50:30").split(",")]


class Caller(FastHttpUser):
    @task
    def predict(self) -> None:
        self.client.post("/predict", json=RECORD)


class Steps(LoadTestShape):
    def tick(self):
        elapsed, end = self.get_run_time(), 0
        for users, seconds in STEPS:
            end += seconds
            if elapsed < end:
                return users, users  # spawn rate: the step's users within a second
        return None
