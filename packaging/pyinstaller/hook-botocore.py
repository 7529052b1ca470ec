"""mlbackend's PyInstaller hook for botocore, used instead of the one in
pyinstaller-hooks-contrib, which bundles the models of all 400-odd AWS
services (28 MB). The server keeps models in S3 and nothing else: it needs
the S3 model, the endpoint and partition tables, and the services botocore's
own credential providers call (STS for assumed roles, SSO and SSO-OIDC for
SSO profiles, Signin for console logins).
"""

from PyInstaller.utils.hooks import collect_data_files

hiddenimports = ["html.parser"]  # as the contributed hook: imported from a string

SERVICES = ["s3", "sts", "sso", "sso-oidc", "signin"]
datas = collect_data_files(
    "botocore", includes=["cacert.pem", "data/*.json"] + [f"data/{s}/**" for s in SERVICES]
)
