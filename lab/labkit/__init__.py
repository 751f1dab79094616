"""The local lab (lab/lab.py is its command line; docs/LAB.md says what it does).

Modules, each leaning only on those above it:

    config    paths, the address plan, names, the base image recipe
    shell     run, locked, write, log, LabError, preflight; mounts and remove_tree
    proxy     the apt cache (apt-cacher-ng)
    registry  the machine-wide registry: which lab owns which index
    labs      the Lab class (names and addresses from its index), the inventory's hosts
    image     the base image (debootstrap, customize)
    net       bridge, iptables rules, sysctls, each host's network namespace and veth
    procs     processes and cgroups of hosts, the supervisor that runs systemd-nspawn
    ssh       waiting for SSH and systemd, ssh argv, apt lists, ssh_config and hosts.json
    hosts     a host's root (overlayfs or a copy), identity, /etc/hosts
    teardown  removing everything a lab made
    commands  up, down, status, reboot, stop, start, cut/restore, purge
    cli       the argument parser and main()
"""
