"""The baseline of bench/serve.py: plain uvicorn + FastAPI serving the same bundle, the same way
(strict parsing, numpy rows, one LightGBM thread), with no Ray.

    python bench/serve_plain.py BUNDLE_DIR PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from raygbm.bundle import Bundle
    from raygbm.request import RequestError, RequestSchema

    bundle = Bundle.load(Path(sys.argv[1]))
    schema = RequestSchema(bundle.preprocessor, 1000)
    booster = bundle.booster
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        try:
            parsed = schema.parse(await request.body())
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        scores = booster.predict(parsed.features, num_threads=1)
        return JSONResponse({"predictions": [{"score": float(s)} for s in scores]})

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
