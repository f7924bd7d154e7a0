# Sourced by scripts/torch2-check and scripts/torch2-test: a private apt configuration
# for Debian 13 (trixie) under .torch2/apt, so packages can be downloaded from it with
# apt-get download while the system's own sources and packages are left alone.
#   trixie_apt ROOT    # makes ROOT/apt (once), fetches the package lists, exports APT_CONFIG
trixie_apt() {
  local root=$1
  mkdir -p "$root/apt/lists/partial" "$root/apt/cache/archives/partial" "$root/apt/etc"
  echo "deb http://deb.debian.org/debian trixie main contrib" >"$root/apt/etc/sources.list"
  cat >"$root/apt/apt.conf" <<EOF
Dir::State "$root/apt";
Dir::State::Lists "$root/apt/lists";
Dir::State::status "/var/lib/dpkg/status";
Dir::Cache "$root/apt/cache";
Dir::Etc::SourceList "$root/apt/etc/sources.list";
Dir::Etc::SourceParts "$root/apt/etc/none";
Dir::Etc::Parts "$root/apt/etc/none";
Dir::Etc::Preferences "$root/apt/etc/preferences";
Dir::Etc::PreferencesParts "$root/apt/etc/none";
Acquire::Languages "none";
EOF
  export APT_CONFIG=$root/apt/apt.conf
  compgen -G "$root/apt/lists/*Packages*" >/dev/null || apt-get update -qq
}
