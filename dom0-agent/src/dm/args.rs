//! The command line libxl gives its device model, and what in it envoy-dm cannot serve.
//!
//! libxl 4.17 starts the device model of a PV guest (`libxl__build_device_model_args_new`) as
//!
//! ```text
//! -xen-domid 1 -no-shutdown
//! -chardev socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-1,server=on,wait=off
//! -mon chardev=libxl-cmd,mode=control
//! -chardev socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-1,server=on,wait=off
//! -mon chardev=libxenstat-cmd,mode=control
//! -nodefaults -no-user-config -xen-attach -name domu -vnc none -display none -nographic
//! -machine xenpv -m 128
//! ```
//!
//! plus options for a graphical console (`-vnc 127.0.0.1:0`, `-sdl`, `-spice`, `-k`), channels
//! (more `-chardev`s), privilege dropping (`-runas`, `-xen-domid-restrict`, ...) and whatever
//! `device_model_args` adds. Options we do not know are logged and ignored; options that ask
//! for something only QEMU can do refuse the guest with the xl setting to remove.

use std::path::PathBuf;

/// The QMP chardev ids libxl creates: its command socket and libxenstat's.
pub const QMP_CHARDEV_IDS: [&str; 2] = ["libxl-cmd", "libxenstat-cmd"];

/// What envoy-dm needs from its command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DmArgs {
    /// `-xen-domid N`.
    pub domid: u32,
    /// `-name N` (for messages).
    pub name: Option<String>,
    /// The QMP sockets to serve: (chardev id, path), `libxl-cmd` first.
    pub qmp: Vec<(String, PathBuf)>,
    /// Options ignored (logged at start).
    pub ignored: Vec<String>,
}

/// Why envoy-dm will not act as this guest's device model.
#[derive(Debug, PartialEq, Eq)]
pub enum ArgsError {
    /// The command line is not one libxl would write (missing or malformed option).
    Usage(String),
    /// The guest needs a real device model: what it is, and what to change in the xl config.
    NeedsQemu { what: String, fix: String },
}

impl std::fmt::Display for ArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgsError::Usage(m) => write!(f, "{m}"),
            ArgsError::NeedsQemu { what, fix } => write!(
                f,
                "this guest needs a real device model (QEMU): {what}. envoy-dm only stands in \
                 for guests whose sole device-model device is 9pfs (p9 = [...]): {fix}, or \
                 remove device_model_override from the xl config to use QEMU"
            ),
        }
    }
}

/// Options that take no value (QEMU's, as far as libxl uses them).
const FLAGS: &[&str] = &[
    "-no-shutdown",
    "-nodefaults",
    "-no-user-config",
    "-xen-attach",
    "-nographic",
    "-xen-domid-restrict",
    "-daemonize",
    "-S",
    "-no-reboot",
    "-full-screen",
    "-std-vga",
    "-enable-kvm",
];

/// Options that take a value and that we know to be harmless here.
const HARMLESS_WITH_VALUE: &[&str] = &[
    "-m", "-display", "-runas", "-chroot", "-sandbox", "-trace", "-pidfile", "-D", "-d", "-k",
    "-smp", "-boot", "-global", "-msg",
];

fn needs_qemu(what: impl Into<String>, fix: impl Into<String>) -> ArgsError {
    ArgsError::NeedsQemu {
        what: what.into(),
        fix: fix.into(),
    }
}

/// Split a QEMU option value `a=b,c=d` (`,,` is a literal comma) into key/value pairs; a field
/// without `=` gets an empty key (QEMU's "implied" first key, e.g. the machine type).
pub fn qemu_opts(value: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                fields.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    fields.push(cur);
    fields
        .into_iter()
        .map(|f| match f.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (String::new(), f),
        })
        .collect()
}

fn opt<'a>(opts: &'a [(String, String)], key: &str) -> Option<&'a str> {
    opts.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Parse libxl's device-model command line (without argv\[0\]).
pub fn parse(args: &[String]) -> Result<DmArgs, ArgsError> {
    let mut out = DmArgs::default();
    let mut domid = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        // QEMU accepts --opt as -opt.
        let name = if a.starts_with("--") { &a[1..] } else { a };
        if !name.starts_with('-') {
            out.ignored.push(a.to_string());
            i += 1;
            continue;
        }
        if FLAGS.contains(&name) {
            if name == "-daemonize" {
                // libxl never asks this of its device model: it watches the process itself.
                return Err(ArgsError::Usage(
                    "-daemonize is not supported (libxl tracks the device model's pid)".into(),
                ));
            }
            if !matches!(
                name,
                "-no-shutdown" | "-nodefaults" | "-no-user-config" | "-xen-attach" | "-nographic"
            ) {
                out.ignored.push(a.to_string());
            }
            i += 1;
            continue;
        }
        let value = args.get(i + 1).map(String::as_str);
        let takes_value = HARMLESS_WITH_VALUE.contains(&name)
            || matches!(
                name,
                "-xen-domid"
                    | "-chardev"
                    | "-mon"
                    | "-name"
                    | "-vnc"
                    | "-machine"
                    | "-M"
                    | "-spice"
                    | "-serial"
                    | "-parallel"
                    | "-monitor"
                    | "-drive"
                    | "-device"
                    | "-net"
                    | "-netdev"
                    | "-usbdevice"
                    | "-vga"
            );
        if !takes_value {
            match name {
                "-sdl" => {
                    return Err(needs_qemu(
                        "an SDL display (-sdl)",
                        "remove sdl=1 and vfb = [...]",
                    ));
                }
                "-usb" => {
                    return Err(needs_qemu(
                        "USB emulation (-usb)",
                        "remove usb/usbctrl/usbdev settings",
                    ));
                }
                _ => {}
            }
            // Unknown: take the next word as its value unless it looks like an option.
            match value {
                Some(v) if !v.starts_with('-') => {
                    out.ignored.push(format!("{a} {v}"));
                    i += 2;
                }
                _ => {
                    out.ignored.push(a.to_string());
                    i += 1;
                }
            }
            continue;
        }
        let Some(value) = value else {
            return Err(ArgsError::Usage(format!("{a} needs a value")));
        };
        i += 2;
        match name {
            "-xen-domid" => {
                let d: u32 = value
                    .parse()
                    .ok()
                    .filter(|d| *d > 0 && *d < 0x7ff0)
                    .ok_or_else(|| ArgsError::Usage(format!("bad -xen-domid {value:?}")))?;
                domid = Some(d);
            }
            "-name" => out.name = Some(value.to_string()),
            "-chardev" => {
                let o = qemu_opts(value);
                let id = opt(&o, "id").unwrap_or_default();
                if QMP_CHARDEV_IDS.contains(&id) {
                    if o.first().map(|(k, v)| (k.as_str(), v.as_str())) != Some(("", "socket")) {
                        return Err(ArgsError::Usage(format!(
                            "-chardev {value}: only socket chardevs are supported for QMP"
                        )));
                    }
                    let path = opt(&o, "path")
                        .filter(|p| !p.is_empty())
                        .ok_or_else(|| ArgsError::Usage(format!("-chardev {value}: no path=")))?;
                    if out.qmp.iter().any(|(i, _)| i == id) {
                        return Err(ArgsError::Usage(format!("-chardev id={id} given twice")));
                    }
                    out.qmp.push((id.to_string(), PathBuf::from(path)));
                } else {
                    return Err(needs_qemu(
                        format!(
                            "a character device `{id}` (-chardev {value}), i.e. a channel or extra console"
                        ),
                        "remove channel = [...] (and serial/console settings served by QEMU)",
                    ));
                }
            }
            "-mon" => {
                let o = qemu_opts(value);
                let chardev = opt(&o, "chardev").unwrap_or_default();
                if !QMP_CHARDEV_IDS.contains(&chardev) || opt(&o, "mode") != Some("control") {
                    out.ignored.push(format!("{a} {value}"));
                }
            }
            "-machine" | "-M" => {
                let o = qemu_opts(value);
                let ty = opt(&o, "type").or_else(|| opt(&o, "")).unwrap_or_default();
                if ty != "xenpv" {
                    return Err(needs_qemu(
                        format!(
                            "machine type `{ty}` (-machine {value}): an HVM guest's emulated platform"
                        ),
                        "envoy-dm serves PV guests only (type = \"pv\")",
                    ));
                }
            }
            "-vnc" => {
                if value != "none" {
                    return Err(needs_qemu(
                        format!("a VNC display (-vnc {value})"),
                        "remove vfb = [...] (and vnc=1)",
                    ));
                }
            }
            "-spice" => {
                return Err(needs_qemu(
                    format!("a SPICE display (-spice {value})"),
                    "remove spice settings and vfb = [...]",
                ));
            }
            "-serial" | "-parallel" | "-monitor" => {
                if value != "none" {
                    return Err(needs_qemu(
                        format!("an emulated {} port ({a} {value})", &name[1..]),
                        "remove serial/console settings served by QEMU",
                    ));
                }
            }
            "-drive" => {
                return Err(needs_qemu(
                    format!("a disk served by QEMU (-drive {value})"),
                    "give disks backendtype=phy (served by dom0's blkback) or remove them from disk = [...]",
                ));
            }
            "-device" | "-net" | "-netdev" | "-usbdevice" | "-vga" => {
                return Err(needs_qemu(
                    format!("an emulated device ({a} {value})"),
                    "remove the devices or device_model_args that add it",
                ));
            }
            _ => {
                // Known harmless option with a value (-m, -display, -runas, ...).
                if !matches!(name, "-m" | "-display") {
                    out.ignored.push(format!("{a} {value}"));
                }
            }
        }
    }
    out.domid = domid.ok_or_else(|| ArgsError::Usage("no -xen-domid".into()))?;
    if !out.qmp.iter().any(|(id, _)| id == "libxl-cmd") {
        return Err(ArgsError::Usage(
            "no -chardev socket,id=libxl-cmd,path=...: libxl talks to its device model there"
                .into(),
        ));
    }
    out.qmp.sort_by_key(|(id, _)| id != "libxl-cmd");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    const LIBXL_417: &str = "-xen-domid 7 -no-shutdown \
        -chardev socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-7,server=on,wait=off \
        -mon chardev=libxl-cmd,mode=control \
        -chardev socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-7,server=on,wait=off \
        -mon chardev=libxenstat-cmd,mode=control \
        -nodefaults -no-user-config -xen-attach -name domu -vnc none -display none -nographic \
        -machine xenpv -m 128";

    #[test]
    fn libxl_417_pv_command_line() {
        let a = parse(&words(LIBXL_417)).unwrap();
        assert_eq!(a.domid, 7);
        assert_eq!(a.name.as_deref(), Some("domu"));
        assert_eq!(
            a.qmp,
            vec![
                (
                    "libxl-cmd".into(),
                    PathBuf::from("/var/run/xen/qmp-libxl-7")
                ),
                (
                    "libxenstat-cmd".into(),
                    PathBuf::from("/var/run/xen/qmp-libxenstat-7")
                )
            ]
        );
        assert!(a.ignored.is_empty(), "{:?}", a.ignored);
    }

    #[test]
    fn unknown_options_are_ignored_and_listed() {
        let a = parse(&words(&format!(
            "{LIBXL_417} -xen-domid-restrict -runas 123:456 -frobnicate x -whatever"
        )))
        .unwrap();
        assert_eq!(
            a.ignored,
            vec![
                "-xen-domid-restrict",
                "-runas 123:456",
                "-frobnicate x",
                "-whatever"
            ]
        );
    }

    #[test]
    fn guests_needing_qemu_are_refused_with_the_fix() {
        for (extra, needle) in [
            ("-machine xenfv", "remove device_model_override"),
            ("-vnc 127.0.0.1:0,to=99", "remove vfb"),
            ("-sdl", "remove sdl=1"),
            ("-drive file=/x.img,if=ide", "backendtype=phy"),
            (
                "-chardev socket,id=libxl-channel0,path=/x",
                "remove channel",
            ),
            ("-device rtl8139", "remove the devices"),
            ("-serial pty", "serial"),
        ] {
            let e = parse(&words(&format!("{LIBXL_417} {extra}"))).unwrap_err();
            assert!(matches!(e, ArgsError::NeedsQemu { .. }), "{extra}: {e:?}");
            assert!(e.to_string().contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn malformed_command_lines() {
        assert!(matches!(
            parse(&words("-machine xenpv")),
            Err(ArgsError::Usage(_))
        ));
        assert!(matches!(
            parse(&words("-xen-domid 3 -machine xenpv")),
            Err(ArgsError::Usage(m)) if m.contains("libxl-cmd")
        ));
        assert!(matches!(
            parse(&words("-xen-domid x")),
            Err(ArgsError::Usage(_))
        ));
        assert!(matches!(
            parse(&words("-xen-domid 0")),
            Err(ArgsError::Usage(_))
        ));
        assert!(matches!(
            parse(&words("-xen-domid")),
            Err(ArgsError::Usage(_))
        ));
    }

    #[test]
    fn qemu_option_syntax() {
        assert_eq!(
            qemu_opts("socket,id=a,path=/x,,y"),
            vec![
                (String::new(), "socket".to_string()),
                ("id".into(), "a".into()),
                ("path".into(), "/x,y".into())
            ]
        );
        assert_eq!(
            qemu_opts("type=xenpv,accel=xen")[0],
            ("type".into(), "xenpv".into())
        );
    }
}
