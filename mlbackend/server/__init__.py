"""Server mode: Moodle's `mlbackend_python` talks to us over HTTP.

The modules, one concern each:

- `auth`: the users of `MOODLE_MLBACKEND_PYTHON_USERS` and password checks;
  `mlbackend passwd` writes entries with it.
- `config`: the settings of one server (options and environment).
- `uploads`: request bodies to files, zips in and out, checked.
- `storage`: where models live between requests (a local directory, or S3
  in `s3`).
- `app`: the eight endpoints; each calls `mlbackend.actions`, as the command
  line does, and formats the answer.
- `wsgi`: the access log and the WSGI server (waitress).

Only `auth` may be imported outside `mlbackend serve`: the others pull in
the HTTP stack, which `mlbackend version` and `--help` must not load.
"""
