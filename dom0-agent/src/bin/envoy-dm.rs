//! `envoy-dm`: stands in for QEMU as the device model of PV guests whose only device-model
//! device is 9pfs (served by envoyd). Use it from the xl config:
//!
//! ```text
//! device_model_override = "/usr/lib/envoy/envoy-dm"
//! p9 = [ 'tag=share, path=/srv/share, security_model=none, backend=0' ]
//! ```
//!
//! libxl starts it with QEMU's command line; see `dm/mod.rs` for what it does.
//! Exit status: 0 when killed by libxl, asked to quit or the domain is gone; 1 on an error;
//! 2 when the command line is not libxl's or the guest needs a real device model.

#[path = "../dm/mod.rs"]
mod dm;

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "envoy-dm: a 9pfs-only stand-in for QEMU as libxl's PV device model (Xen 4.17).\n\
             Use it with device_model_override = \"/usr/lib/envoy/envoy-dm\" in the xl config;\n\
             libxl passes QEMU's options (-xen-domid N -chardev socket,id=libxl-cmd,path=P ...)."
        );
        return;
    }
    eprintln!("envoy-dm: started with: {}", argv.join(" "));
    let a = match dm::args::parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("envoy-dm: refusing: {e}");
            std::process::exit(2);
        }
    };
    let domid = a.domid;
    for o in &a.ignored {
        eprintln!("envoy-dm[{domid}]: ignoring option {o}");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("envoy-dm[{domid}]: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(dm::run(a)) {
        Ok(ending) => eprintln!("envoy-dm[{domid}]: exiting ({ending})"),
        Err(e) if e.is::<dm::Refused>() => {
            eprintln!("envoy-dm[{domid}]: refusing: {e}");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("envoy-dm[{domid}]: error: {e:#}");
            std::process::exit(1);
        }
    }
}
