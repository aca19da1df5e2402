"""A served teacher's version as the teacher check observes it and as the trajectories are keyed by.

Against tests/openai_stub.py: new weights behind the same model id, root and server version must be
a new observation (the probe), and so must a new declared version; the observation must be the
version the `teacher` asset records (`ModelsResource.teacher_version`), or the automation would
re-run for nothing or the stored work would be reused for a changed teacher.
"""

from __future__ import annotations

from gen_ssd_dagster.defs.automation import observe_teacher
from gen_ssd_dagster.defs.resources import ModelsResource
from gen_ssd_dagster.store import Home
from openai_stub import OpenAIStub


def test_new_weights_behind_the_same_server_are_a_new_observation(tmp_path, tiny_models):
    home = Home.resolve(tmp_path)
    name = str(tiny_models[0])  # `vllm serve PATH` serves PATH under that id; its tokenizer prompts the probe
    with OpenAIStub(model=name, root=name) as stub:
        models = ModelsResource(teacher=name, teacher_url=stub.url)
        before, again = observe_teacher(models, home), observe_teacher(models, home)
        keyed = models.teacher_version(models.teacher_spec(home))
        stub.weights = "w2"
        after = observe_teacher(models, home)
        declared = observe_teacher(ModelsResource(teacher=name, teacher_url=stub.url,
                                                  teacher_declared_version="run-42"), home)
        unprobed = observe_teacher(ModelsResource(teacher=name, teacher_url=stub.url, teacher_probe=False), home)
    assert (before.source, before.detail) == ("server", stub.url)
    assert again.version == before.version == keyed  # what the trajectories of this teacher are keyed by
    assert before.version.startswith(f"{name} vllm=0.0.stub probe=")
    assert after.version != before.version
    assert declared.version.startswith(f"{name} vllm=0.0.stub declared=run-42 probe=")
    assert unprobed.version == f"{name} vllm=0.0.stub"
    # one try per check (the teacher check's max_retries=0): nothing failed here, so one request each
    assert stub.paths().count("/v1/models") == 6
