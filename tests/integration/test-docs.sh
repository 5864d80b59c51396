#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The documentation matches the program, and `meson install` puts everything in its place:
#  - every key the parser accepts (the known[] lists of gateway/conf/conf.c and conf-policy.c) is
#    in configs/gateway.conf and in docs/gateway.conf.5, each in its own group; where the
#    parser's default is a literal, both state that default;
#  - groff formats each man page without a warning, and man-db finds its NAME line;
#  - the EXAMPLES configs of gateway.conf.5, configs/gateway.conf, and configs/gateway.conf
#    with every commented-out key and group turned on, all pass `gatewayd -n` (their /etc
#    paths pointed at temp files);
#  - `meson install` into a temp DESTDIR installs exactly the expected files, and a second
#    install keeps an edited /etc config.
# Usage: test-docs.sh (meson passes GATEWAYD, GW_BUILD_ROOT and the install dirs in env).
source "$(dirname "$0")/lib.sh"
: "${GW_BUILD_ROOT:?set GW_BUILD_ROOT to the meson build dir (meson test sets it)}"
: "${GW_PREFIX:?}" "${GW_BINDIR:?}" "${GW_SBINDIR:?}" "${GW_SYSCONFDIR:?}" "${GW_DATADIR:?}"
: "${GW_MANDIR:?}"
src=$(cd "$(dirname "$0")/../.." && pwd)
conf_c=("$src/gateway/conf/conf.c" "$src/gateway/conf/conf-policy.c")
example=$src/configs/gateway.conf
page=$src/docs/gateway.conf.5
pages=("$src/docs/gateway.conf.5" "$src/docs/gatewayd.8" "$src/docs/gwctl.1")
# Today 13 lists and 80 keys: far fewer means the extraction broke, not that keys went.
min_lists=10
min_keys=60
min_defaults=30

gw_require groff lexgrog perl meson
oneline() { tr '\n' ' ' <<<"$1"; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gw-$GW_TEST.XXXXXX")
trap gw_cleanup EXIT
trap 'GW_FAILED=1; gw_log "FAIL: line $LINENO: $BASH_COMMAND"' ERR

# ---- the keys the parser knows ----

# "FUNCTION KEY" for each entry of each `known[] = { ... };` list, the function being the one
# whose definition (its name at the start of a line, as house style has it) came last.
awk '
  /^[a-z_][a-z0-9_]*\(/ { fn = $0; sub(/\(.*/, "", fn) }
  /known\[\][[:space:]]*=[[:space:]]*\{/ { collecting = 1; text = ""; lists++ }
  collecting {
    text = text $0
    if ($0 ~ /\};/) {
      collecting = 0
      while (match(text, /"[^"]*"/)) {
        print fn, substr(text, RSTART + 1, RLENGTH - 2)
        text = substr(text, RSTART + RLENGTH)
      }
    }
  }
  END { print lists > "/dev/stderr" }
' "${conf_c[@]}" >"$WORK/known.raw" 2>"$WORK/lists"
nlists=$(cat "$WORK/lists")
nkeys=$(wc -l <"$WORK/known.raw")
gw_log "parser: $nlists known[] lists, $nkeys keys"
[ "$nlists" -ge "$min_lists" ] ||
  gw_fail "found only $nlists known[] lists in ${conf_c[*]} (want $min_lists or more): has their form changed? fix the extraction in $0"
[ "$nkeys" -ge "$min_keys" ] ||
  gw_fail "found only $nkeys keys in the known[] lists (want $min_keys or more): fix the extraction in $0"

# The top level's list names the groups; each other list belongs to one of them.
mapfile -t top < <(awk '$1 == "gwconf_load" { print $2 }' "$WORK/known.raw")
[ ${#top[@]} -ge 8 ] || gw_fail "no top-level list (gwconf_load's known[]) found"
group_of() {
  case $1 in
    gwconf_load) echo TOP ;;
    parse_route) echo routes ;;
    parse_policy | parse_statement | parse_condition) echo policies ;;
    parse_*)
      local g=${1#parse_} t
      for t in "${top[@]}"; do
        [ "$t" = "$g" ] && { echo "$g"; return; }
      done
      echo "?$1"
      ;;
    *) echo "?$1" ;;
  esac
}
: >"$WORK/known"
while read -r fn key; do
  g=$(group_of "$fn")
  [ "${g#\?}" = "$g" ] ||
    gw_fail "$fn has a known[] list, but $0 cannot tell which group it reads: add it to group_of()"
  echo "$g $key" >>"$WORK/known"
done <"$WORK/known.raw"
sort -u -o "$WORK/known" "$WORK/known"

# ---- each key in configs/gateway.conf, in its group ----

# Prints "GROUP KEY" for every `KEY =` (commented out or not) inside the block of each
# top-level group or list, and "TOP GROUP" for the block itself. A top-level block starts at
# column 0 (or after "# ") and ends at its "};" or ");" there.
conf_keys() {
  awk '
    match($0, /^(# )?[a-z_]+ = [{(]/) {
      g = $0; sub(/^# /, "", g); sub(/ .*/, "", g); print "TOP", g; cur = g; next
    }
    /^(# )?[})];/ { cur = ""; next }
    cur != "" {
      line = $0
      while (match(line, /(^|[[:space:]{(;#])[a-z_]+[[:space:]]*=[^=]/)) {
        k = substr(line, RSTART, RLENGTH); sub(/^[[:space:]{(;#]/, "", k); sub(/[[:space:]]*=.*/, "", k)
        print cur, k
        line = substr(line, RSTART + RLENGTH)
      }
    }
  ' "$1" | sort -u
}
conf_keys "$example" >"$WORK/example.keys"
missing=$(comm -23 "$WORK/known" "$WORK/example.keys" | sed 's/^TOP /(top level) /; s/ /./')
[ -z "$missing" ] ||
  gw_fail "keys the parser accepts but configs/gateway.conf does not show (as 'key = default;' in its group): $(oneline "$missing")"

# ---- each key in gateway.conf(5), under the .SS of its group ----

# "GROUP KEY" for each ".TP" tagged ".B KEY" (not in an indented .RS list); "TOP GROUP" for
# each ".SS GROUP". A .SS title's
# first word names the group ("policies: statements" is policies).
page_keys() {
  awk '
    /^\.SH/ { cur = "" }
    /^\.SS/ { t = $0; sub(/^\.SS[[:space:]]+"?/, "", t); sub(/[":[:space:]].*/, "", t)
              cur = t; print "TOP", t; next }
    /^\.RS/ { rs++ }
    /^\.RE/ { rs-- }
    /^\.TP/ { tp = (rs == 0); next }
    tp && cur != "" && /^\.B[[:space:]]/ { k = $2; gsub(/"/, "", k); print cur, k }
    { tp = 0 }
  ' "$1" | sort -u
}
page_keys "$page" >"$WORK/page.keys"
missing=$(comm -23 "$WORK/known" "$WORK/page.keys" | sed 's/^TOP /(top level) /; s/ /./')
[ -z "$missing" ] ||
  gw_fail "keys the parser accepts but docs/gateway.conf.5 does not document (.TP/.B KEY under .SS GROUP): $(oneline "$missing")"
# And the other way: a documented key the parser does not know is a stale page.
extra=$(comm -13 "$WORK/known" "$WORK/page.keys" | gw_grep -v '^TOP ' | sed 's/ /./')
[ -z "$extra" ] || gw_fail "docs/gateway.conf.5 documents keys the parser does not know: $(oneline "$extra")"

# ---- the parser's literal defaults, in both ----

# "GNAME KEY DEFAULT" for each conf_int/conf_string/... call whose default is a literal: a
# number (expressions such as 4 << 20 evaluated), a string, true/false.
perl -0777 -ne '
  while (/\b(?:conf_int|conf_string|conf_path|conf_bool|conf_fraction|get_bytes|get_template)
          \(\s*p\s*,\s*\w+\s*,\s*"(\w+)"\s*,\s*"(\w+)"\s*,\s*([^,;]+?)\s*[,)]/gx) {
    my ($g, $k, $d) = ($1, $2, $3);
    if ($d =~ /^"([^"]*)"$/) { print "$g $k \"$1\"\n"; next }
    if ($d =~ /^(true|false)$/) { print "$g $k $d\n"; next }
    if ($d =~ /^[0-9]+\.[0-9]+$/) { print "$g $k $d\n"; next }
    (my $e = $d) =~ s/([0-9])(?:LL|L|U|u)\b/$1/g;
    next unless $e =~ /^[0-9 ()<*+]+$/;
    print "$g $k ", eval($e), "\n";
  }
' "${conf_c[@]}" >"$WORK/defaults"
ndefaults=$(wc -l <"$WORK/defaults")
[ "$ndefaults" -ge "$min_defaults" ] ||
  gw_fail "found only $ndefaults literal defaults in conf_int(...) and the like (want $min_defaults): fix the extraction in $0"

# The lines of group g's block in the example, uncommented.
block() {
  awk -v g="$1" '
    match($0, /^(# )?[a-z_]+ = [{(]/) { t = $0; sub(/^# /, "", t); sub(/ .*/, "", t); cur = t; next }
    /^(# )?[})];/ { cur = ""; next }
    cur == g { sub(/^[[:space:]#]*/, ""); print }
  ' "$example"
}
# The paragraph of .B KEY under .SS GROUP in the page, as text (\- and \(dq resolved).
para() {
  awk -v g="$1" -v k="$2" '
    /^\.S[HS]/ { t = $0; sub(/^\.SS[[:space:]]+"?/, "", t); sub(/[":[:space:]].*/, "", t)
                 cur = ($0 ~ /^\.SS/) ? t : ""; on = 0 }
    /^\.(TP|PP)/ { on = 0; tp = 1; next }
    tp && cur == g && $0 ~ "^\\.B[[:space:]]+\"?" k "\"?$" { on = 1 }
    { tp = 0 }
    on { print }
  ' "$page" | sed 's/\\-/-/g; s/\\(dq/"/g; s/\\&//g'
}
checked=0
while read -r gname key def; do
  case $gname in
    route) g=routes ;;
    policy | statement | condition) g=policies ;;
    *) g=$gname ;;
  esac
  re_def=$(printf '%s' "$def" | sed 's/[][\.*^$/{}()+?|]/\\&/g')
  # Not grep -q in a pipe: it may stop reading early, and the writer's SIGPIPE fails the pipe.
  block "$g" | grep -E "(^|[[:space:]{(;])${key}[[:space:]]*=[[:space:]]*${re_def}[[:space:]]*;" >/dev/null ||
    gw_fail "configs/gateway.conf: $g.$key does not show its default, '$key = $def;' (the parser's)"
  # A key the page calls required has no default to state (metrics.port has one in the code,
  # never used: the parser reports the key missing first).
  para "$g" "$key" >"$WORK/para"
  grep -q '^Required' "$WORK/para" || grep -E "Default: $re_def([^0-9.]|\.?$)" "$WORK/para" >/dev/null ||
    gw_fail "docs/gateway.conf.5: $g.$key does not say 'Default: $def' (the parser's default)"
  checked=$((checked + 1))
done <"$WORK/defaults"
gw_log "keys: all $nkeys in configs/gateway.conf and gateway.conf(5); $checked literal defaults agree"

# ---- the man pages format cleanly ----

for p in "${pages[@]}"; do
  LC_ALL=C.UTF-8 groff -man -ww -z -Tutf8 "$p" 2>"$WORK/groff.err" || gw_fail "groff failed on $p"
  [ ! -s "$WORK/groff.err" ] || gw_fail "groff warns about $p: $(cat "$WORK/groff.err")"
  if command -v man >/dev/null; then
    LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings=all -l "$p" >/dev/null 2>"$WORK/man.err" ||
      gw_fail "man -l $p failed: $(cat "$WORK/man.err")"
    [ ! -s "$WORK/man.err" ] || gw_fail "man warns about $p: $(cat "$WORK/man.err")"
  fi
  # whatis/apropos read the NAME line: "name \- what it is".
  lexgrog "$p" >/dev/null 2>&1 || gw_fail "$p: man-db cannot parse its NAME section"
  name=$(basename "$p")
  th=$(sed -n 's/^\.TH[[:space:]]\+\([^[:space:]]\+\)[[:space:]]\+\([0-9]\).*/\1.\2/p' "$p")
  [ "${th,,}" = "${name,,}" ] || gw_fail "$p: .TH says $th, the file is $name"
done

# ---- the configs pass gatewayd -n ----

# Points every "/etc/gateway/NAME" at $WORK/etc/NAME, which it creates (gatewayd -n checks that
# CA files can be read, and opens nothing else).
mkdir "$WORK/etc"
# The example's placeholders filled in: its /etc files made and the documentation's reserved
# host names (example.com), which gatewayd -n refuses as never filled in, made real-looking.
retarget() {
  gw_grep -o '"/etc/gateway/[^"]*"' "$1" | tr -d '"' | while read -r f; do
    cp "$GW_TEST_DATA/conf/ca.pem" "$WORK/etc/${f#/etc/gateway/}"
  done
  sed "s|\"/etc/gateway/|\"$WORK/etc/|g; s|\.example\.com\([:/\"]\)|.test\1|g" "$1"
}
check_conf() { # FILE WHAT
  local out
  out=$("$GATEWAYD" -n -c "$1" 2>&1) || gw_fail "$2 does not pass gatewayd -n: $out"
  [ "$out" = "configuration OK" ] || gw_fail "gatewayd -n on $2 printed: $out"
}

# The .EX blocks of the EXAMPLES section, as plain text, one file each.
awk -v dir="$WORK" '
  /^\.SH/ { ex = ($0 ~ /^\.SH[[:space:]]+"?EXAMPLES/) }
  ex && /^\.EX/ { n++; f = dir "/example-" n ".roff"; on = 1; next }
  on && /^\.EE/ { on = 0; close(f); next }
  on { print > f }
' "$page"
n=0
for f in "$WORK"/example-*.roff; do
  [ -e "$f" ] || break
  n=$((n + 1))
  sed 's/\\-/-/g; s/\\(dq/"/g; s/\\&//g; s/\\e/\\/g' "$f" >"$WORK/example.txt"
  retarget "$WORK/example.txt" >"$WORK/etc/example-$n.conf"
  # A relative file name is taken from the config's folder.
  sed -n 's/.*ca_file = "\([^"/][^"]*\)".*/\1/p' "$WORK/etc/example-$n.conf" | while read -r rel; do
    cp "$GW_TEST_DATA/conf/ca.pem" "$WORK/etc/$rel"
  done
  check_conf "$WORK/etc/example-$n.conf" "gateway.conf(5) EXAMPLES config $n"
done
[ "$n" -ge 1 ] || gw_fail "no .EX config in the EXAMPLES section of $page"

retarget "$example" >"$WORK/etc/gateway.conf"
check_conf "$WORK/etc/gateway.conf" "configs/gateway.conf"
# Everything turned on: the commented-out groups ("# est = {" ... "# };") lose one "# " per
# line (their explanations, "#   # ...", stay comments), and commented defaults inside the
# other groups ("  # keepalive = 60;") become settings.
awk '
  /^# [a-z_]+ = [{(][[:space:]]*$/ { on = 1 }
  on { sub(/^# ?/, ""); print; if ($0 ~ /^[})];/) on = 0; next }
  { print }
' "$example" | sed -E 's/^([[:space:]]+)# ([a-z_]+ = [^;]*;)[[:space:]]*$/\1\2/' >"$WORK/all-on.conf"
retarget "$WORK/all-on.conf" >"$WORK/etc/all-on.conf"
grep -q '^est = {' "$WORK/etc/all-on.conf" || gw_fail "could not turn on the commented-out groups"
check_conf "$WORK/etc/all-on.conf" "configs/gateway.conf with every commented-out key turned on"
gw_log "configs: $n EXAMPLES of gateway.conf(5), configs/gateway.conf, and it all turned on pass gatewayd -n"

# ---- meson install ----

dest=$WORK/dest
DESTDIR=$dest meson install --no-rebuild --quiet -C "$GW_BUILD_ROOT" >"$WORK/install.log" 2>&1 ||
  gw_fail "meson install failed: $(tail -n 5 "$WORK/install.log")"
abs() { case $1 in /*) echo "$1" ;; *) echo "$GW_PREFIX/$1" ;; esac }
sysconf=$(abs "$GW_SYSCONFDIR")
data=$(abs "$GW_DATADIR")
man=$(abs "$GW_MANDIR")
lib=$GW_PREFIX/lib
cat >"$WORK/expected" <<EOF
$(abs "$GW_SBINDIR")/gatewayd
$(abs "$GW_BINDIR")/gwctl
$lib/systemd/system/gatewayd.service
$lib/sysusers.d/gatewayd.conf
$lib/tmpfiles.d/gatewayd.conf
$lib/sysctl.d/60-gatewayd.conf
$sysconf/gateway/gateway.conf
$data/doc/gatewayd/README.md
$data/doc/gatewayd/examples/gateway.conf
$man/man1/gwctl.1
$man/man5/gateway.conf.5
$man/man8/gatewayd.8
EOF
sort -o "$WORK/expected" "$WORK/expected"
(cd "$dest" && find . -type f -o -type l) | sed 's|^\.||' | sort >"$WORK/installed"
gw_log "meson install put:"
sed 's/^/  /' "$WORK/installed" >&2
missing=$(comm -23 "$WORK/expected" "$WORK/installed")
[ -z "$missing" ] || gw_fail "meson install did not install: $(oneline "$missing")"
extra=$(comm -13 "$WORK/expected" "$WORK/installed")
[ -z "$extra" ] ||
  gw_fail "meson install installed unexpected files (add them to the list in $0 and to README's): $(oneline "$extra")"
cmp -s "$dest$sysconf/gateway/gateway.conf" "$example" || gw_fail "the installed config is not configs/gateway.conf"
for p in "${pages[@]}"; do
  n=$(basename "$p")
  cmp -s "$dest$man/man${n##*.}/$n" "$p" || gw_fail "the installed $n differs from $p"
done
grep -q "^ExecStart=$(abs "$GW_SBINDIR")/gatewayd " "$dest$lib/systemd/system/gatewayd.service" ||
  gw_fail "the installed unit does not start $(abs "$GW_SBINDIR")/gatewayd"
grep -q '^Documentation=.*man:gatewayd(8)' "$dest$lib/systemd/system/gatewayd.service" ||
  gw_fail "the installed unit does not point at gatewayd(8)"

# Installing again (an upgrade) keeps the operator's config, and refreshes the example.
echo '# edited by the operator' >>"$dest$sysconf/gateway/gateway.conf"
DESTDIR=$dest meson install --no-rebuild --quiet -C "$GW_BUILD_ROOT" >"$WORK/install.log" 2>&1 ||
  gw_fail "meson install (again) failed: $(tail -n 5 "$WORK/install.log")"
grep -q '^# edited by the operator' "$dest$sysconf/gateway/gateway.conf" ||
  gw_fail "a second meson install overwrote $sysconf/gateway/gateway.conf"
gw_pass
