"""What a user sees of the config file and the selection order, through the ``portctl`` script:
typos refused at once, a variable set in a shell beats the checked-in config file, and the
advice of an error names what would change the outcome."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import HOST, Run, error_line


def test_a_typo_in_a_service_table_is_refused_naming_file_key_and_closest(run: Run, tmp_path: Path) -> None:
    config = tmp_path / "portctl.toml"
    config.write_text("[services.vector_db]\ntype = 'database'\nprot = 7510\nalternatives = [7512]\n")
    result = run("status")
    assert result.returncode == 2
    line = error_line(result)
    assert f"{config}: [services.vector_db]: 'prot' is not valid" in line
    assert "did you mean 'port'?" in line
    config.write_text("[services.vector_db]\nport = 7510\nalternative = [7512]\n")
    assert "did you mean 'alternatives'?" in error_line(run("allocate", "--service", "vector_db"))


def test_portctl_store_in_the_shell_beats_the_config_file(run: Run, tmp_path: Path, store_path: Path) -> None:
    (tmp_path / "portctl.toml").write_text('store = "file:checked-in.json"\n')
    result = run("status", "--json")  # the test environment sets PORTCTL_STORE
    assert json.loads(result.stdout)["data"]["store"]["source"] == "PORTCTL_STORE"
    assert run("allocate", "--service", "redis").returncode == 0
    assert store_path.exists()
    assert not (tmp_path / "checked-in.json").exists()
    result = run("status", "--json", env={"PORTCTL_STORE": None})
    assert json.loads(result.stdout)["data"]["store"]["source"] == f"config file {tmp_path}/portctl.toml"


def test_a_bad_config_store_folder_advises_what_beats_it(run: Run, tmp_path: Path) -> None:
    config = tmp_path / "portctl.toml"
    config.write_text('store = "file:gone/store.json"\n')
    result = run("allocate", "--service", "redis", env={"PORTCTL_STORE": None})
    assert result.returncode == 2
    line = error_line(result)
    assert f"{tmp_path}/gone does not exist" in line
    assert f"change store in {config}" in line
    assert "--store or PORTCTL_STORE" in line
    assert not (tmp_path / "gone").exists()
    # Either advice works: the flag, or the variable.
    assert run("status", "--store", tmp_path / "flag.json", env={"PORTCTL_STORE": None}).returncode == 0
    assert run("status").returncode == 0  # PORTCTL_STORE is set by the test environment


def test_host_and_env_variables_beat_the_config_file_and_flags_beat_both(run: Run, tmp_path: Path) -> None:
    (tmp_path / "portctl.toml").write_text('host = "web-1"\nenvironment = "staging"\n')
    data = json.loads(run("status", "--json").stdout)["data"]
    assert data["host"] == HOST  # PORTCTL_HOST, set by the test environment
    assert json.loads(run("status", "--json", env={"PORTCTL_HOST": None}).stdout)["data"]["host"] == "web-1"
    result = run("allocate", "--service", "redis", "--json", env={"PORTCTL_ENV": "development"})
    assert json.loads(result.stdout)["data"]["environment"] == "development"
    result = run(
        "allocate", "--service", "redis", "--json", "--env", "production", env={"PORTCTL_ENV": "development"}
    )
    assert json.loads(result.stdout)["data"]["environment"] == "production"
    result = run("allocate", "--service", "redis", "--json")
    assert json.loads(result.stdout)["data"]["environment"] == "staging"
