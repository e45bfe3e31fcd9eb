"""Why management stays without a key (docs/security.md): TorchServe 0.12's token authorization is one
switch for inference and management. Turned on, it guards management, and also refuses every
inference call without the inference key, which README's curls do not send."""

import requests

from conftest import MODEL_STORE
from sentiment.ops.torchserve import LocalTorchServe, bearer

PREDICT = "/predictions/sentiment"


def test_token_authorization_guards_management_and_inference_together(export_dir):
    with LocalTorchServe(MODEL_STORE, config={"disable_token_authorization": "false"}) as ts:
        assert ts.key_file.stat().st_mode & 0o777 == 0o600  # in the server's working directory, its owner's only
        scale = {"min_worker": 2, "max_worker": 2, "synchronous": "true"}
        assert requests.put(ts.management + "/models/sentiment", params=scale, timeout=60).status_code == 400
        assert ts.admin.request("PUT", "/models/sentiment", scale).status_code == 200  # with the management key
        review = {"text": "A gorgeous, moving film with a wonderful cast."}
        refused = requests.post(ts.inference + PREDICT, json=review, timeout=10)  # as README's curls send it
        assert refused.status_code == 400 and "Token Authorization failed" in refused.text, refused.text
        answered = requests.post(ts.inference + PREDICT, json=review, headers=bearer(ts.key_file, "inference"), timeout=10)
        assert answered.status_code == 200 and answered.json()["label"] == "positive", answered.text
        wrong_key = requests.post(ts.inference + PREDICT, json=review, headers=bearer(ts.key_file, "management"), timeout=10)
        assert wrong_key.status_code == 400


def test_shipped_config_answers_inference_without_a_key(server):
    assert not server.key_file.exists()
    assert requests.post(server.inference + PREDICT, json={"text": "fine"}, timeout=10).status_code == 200
