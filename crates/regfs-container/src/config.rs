//! From an OCI image config to a process: command line and environment,
//! merged the way `docker run` merges them.

use oci_spec::image::Config;

/// The `PATH` docker gives a container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The command line to run: the image's `Entrypoint` followed by
/// `cmd_override` when it is non-empty, else by the image's `Cmd`.
pub fn command_from_config(cfg: &Config, cmd_override: &[String]) -> Vec<String> {
    let mut args = cfg.entrypoint().clone().unwrap_or_default();
    if cmd_override.is_empty() {
        args.extend(cfg.cmd().iter().flatten().cloned());
    } else {
        args.extend(cmd_override.iter().cloned());
    }
    args
}

/// The environment: the image's `Env`, then each `-e` override in order.
///
/// An override `KEY=VALUE` replaces or adds `KEY`; a bare `KEY` copies the
/// host's value (and is dropped when the host has none), as docker does.
/// `PATH` defaults to [`DEFAULT_PATH`].
pub fn env_from_config(cfg: &Config, overrides: &[String]) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_owned();
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(key.as_str()))
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    };
    for entry in cfg.env().iter().flatten() {
        set(entry.clone());
    }
    for entry in overrides {
        if entry.contains('=') {
            set(entry.clone());
        } else if let Some(value) = std::env::var_os(entry) {
            set(format!("{entry}={}", value.to_string_lossy()));
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    env
}

#[cfg(test)]
mod tests {
    use oci_spec::image::ConfigBuilder;

    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn config(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>, env: Option<&[&str]>) -> Config {
        let mut b = ConfigBuilder::default();
        if let Some(e) = entrypoint {
            b = b.entrypoint(strings(e));
        }
        if let Some(c) = cmd {
            b = b.cmd(strings(c));
        }
        if let Some(e) = env {
            b = b.env(strings(e));
        }
        b.build().expect("config builds")
    }

    #[test]
    fn command_merges_entrypoint_and_cmd_like_docker() {
        type Case<'a> = (
            Option<&'a [&'a str]>,
            Option<&'a [&'a str]>,
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (None, Some(&["sh"]), &[], &["sh"]),
            (None, Some(&["sh"]), &["echo", "hi"], &["echo", "hi"]),
            (
                Some(&["/init", "-v"]),
                Some(&["serve"]),
                &[],
                &["/init", "-v", "serve"],
            ),
            (Some(&["/init"]), Some(&["serve"]), &["x"], &["/init", "x"]),
            (Some(&["/init"]), None, &[], &["/init"]),
            (None, None, &[], &[]),
        ];
        for (entrypoint, cmd, over, want) in cases {
            let cfg = config(*entrypoint, *cmd, None);
            assert_eq!(command_from_config(&cfg, &strings(over)), strings(want));
        }
    }

    #[test]
    fn env_overrides_replace_and_path_defaults() {
        let cfg = config(None, None, Some(&["A=1", "B=2"]));
        let env = env_from_config(&cfg, &strings(&["B=3", "C=4"]));
        assert_eq!(
            env,
            strings(&["A=1", "B=3", "C=4", &format!("PATH={DEFAULT_PATH}")])
        );

        let cfg = config(None, None, Some(&["PATH=/x", "EMPTY="]));
        assert_eq!(env_from_config(&cfg, &[]), strings(&["PATH=/x", "EMPTY="]));
    }

    #[test]
    fn bare_env_key_copies_the_host_value_or_is_dropped() {
        let cfg = config(None, None, None);
        let env = env_from_config(&cfg, &strings(&["PATH", "REGFS_SURELY_UNSET_VARIABLE"]));
        let host_path = std::env::var("PATH").expect("test runs with PATH");
        assert_eq!(env, vec![format!("PATH={host_path}")]);
    }
}
