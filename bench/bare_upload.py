"""The plain FastAPI upload the api's document upload is measured against: a
route that writes the uploaded bytes to a file, and nothing else (no key, no
checks, no record, no job).

`python -m bench.bare_upload PORT FOLDER` serves it with uvicorn (uvloop,
httptools, no access log), the options `python -m conveyor_api` runs with.
"""

import shutil
import sys
from pathlib import Path
from typing import Annotated
from uuid import uuid4

import uvicorn
from fastapi import FastAPI, File, UploadFile


def create_app(folder: Path) -> FastAPI:
    app = FastAPI()
    folder.mkdir(parents=True, exist_ok=True)

    @app.post("/upload", status_code=201)
    def upload(file: Annotated[UploadFile, File()]) -> dict[str, str]:
        # A sync route: FastAPI runs it in its thread pool, as blocking file work should.
        name = uuid4().hex
        with (folder / name).open("wb") as out:
            shutil.copyfileobj(file.file, out, 1024 * 1024)
        return {"id": name}

    return app


if __name__ == "__main__":
    port, folder = int(sys.argv[1]), Path(sys.argv[2])
    uvicorn.run(
        create_app(folder),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
