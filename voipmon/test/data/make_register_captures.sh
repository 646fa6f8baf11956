#!/bin/sh
# Make voipmon's REGISTER and non-call SIP captures with Debian programs on loopback:
# kamailio as the registrar (register_kamailio.cfg), SIPp (sip-tester) as phones and a PBX,
# sipvicious (svwar, svcrack) as the attacker, tcpdump on lo as the sensor.
#
#   sh make_register_captures.sh [OUTDIR]      (root, for tcpdump on lo)
#
# Writes into OUTDIR (default: this folder)
#   register_kamailio_sipp_lo.pcap    phones: digest login, refresh and unregister in one
#       Call-ID (alice), a wrong password three times (bob), 403 (blocked), no answer
#       (mute), an expiry of 2 s that is not refreshed (dave), one user on two contacts
#       (erin), and a last login 9 s after dave's (carol) so that capture time passes it.
#   register_sipvicious_lo.pcap       svwar enumerating 1000-1059 from 127.0.0.1 (1001-1003
#       exist), svcrack guessing 1001's password (30 wrong, then right), and alice logging
#       in from 127.0.0.3 before and after.
#   sipmsg_kamailio_sipp_lo.pcap      a PBX: OPTIONS, SUBSCRIBE, NOTIFY and MESSAGE
#       answered (sipmsg_uac.xml); OPTIONS answered after 3 s (slow) and never (silent);
#       a last OPTIONS 6 s after the unanswered one.
# The registrar is 127.0.0.2, phones and the PBX 127.0.0.3, on free UDP ports.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(cd "${1:-$HERE}" && pwd)
REGISTRAR=127.0.0.2
PHONES=127.0.0.3
WORK=$(mktemp -d)
KPID=""
TPID=""

cleanup() {
    [ -n "$TPID" ] && kill -INT "$TPID" 2>/dev/null || true
    [ -n "$KPID" ] && kill "$KPID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

for tool in kamailio sipp svwar svcrack tcpdump python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done

free_port() {   # a UDP port free on $1 right now
    python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))
print(s.getsockname()[1])' "$1"
}

wait_for() {    # wait_for FILE TEXT: up to 10 s for TEXT to appear in FILE
    i=0
    until grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -le 100 ] || { echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1; }
        sleep 0.1
    done
}

KPORT=$(free_port $REGISTRAR)
kamailio -DD -E -f "$HERE/register_kamailio.cfg" -l "udp:$REGISTRAR:$KPORT" \
    -Y "$WORK" -w "$WORK" -P "$WORK/kamailio.pid" >"$WORK/kamailio.log" 2>&1 &
KPID=$!
wait_for "$WORK/kamailio.log" "Listening on"

capture() {     # capture NAME: start tcpdump on lo into OUT/NAME
    : >"$WORK/tcpdump.log"
    tcpdump -i lo -U -n --immediate-mode -w "$OUT/$1" "udp and host $REGISTRAR and port $KPORT" \
        2>"$WORK/tcpdump.log" &
    TPID=$!
    wait_for "$WORK/tcpdump.log" "listening on"
}

stop_capture() {   # after a second, so that nothing sent is still on its way to tcpdump
    sleep 1
    kill -INT "$TPID"
    wait "$TPID" || true
    TPID=""
    grep -E "captured|dropped by kernel" "$WORK/tcpdump.log" >&2 || true
}

sipp_check() {  # sipp_check RC WHAT: SIPp counts a receive timeout it was told to expect
    # (ontimeout) as a failed call; that one is fine, anything else is not.
    [ "$1" -eq 0 ] && return 0
    if [ "$1" -eq 1 ] && grep -q "receive timeout" "$WORK"/*_errors.log 2>/dev/null && \
            ! grep -v "receive timeout\|events occurred" "$WORK"/*_errors.log | grep -q .; then
        rm -f "$WORK"/*_errors.log
        return 0
    fi
    echo "sipp $2 failed" >&2; tail -20 "$WORK/sipp.log" >&2; cat "$WORK"/*_errors.log >&2
    exit 1
}

sipp_run() {    # sipp_run SCENARIO USER [PASSWORD EXPIRES]
    rc=0
    (cd "$WORK" && sipp -sf "$HERE/$1" -s "$2" -au "$2" -ap "${3:-none}" \
        -key expires "${4:-3600}" -m 1 -i $PHONES -p "$(free_port $PHONES)" -timeout 30 \
        -nostdin -trace_err "$REGISTRAR:$KPORT" >"$WORK/sipp.log" 2>&1) || rc=$?
    sipp_check "$rc" "$1 $2"
}

# -- phones ------------------------------------------------------------------------------
capture register_kamailio_sipp_lo.pcap
sipp_run register_auth.xml dave dave-secret 2
dave=$(date +%s)
sipp_run register_lifecycle.xml alice alice-secret 60
for attempt in 1 2 3; do
    sipp_run register_wrongpw.xml bob not-bobs-password 3600
done
sipp_run register_403.xml blocked whatever 3600
sipp_run register_noanswer.xml mute whatever 3600
sipp_run register_auth.xml erin erin-secret 3600
sipp_run register_auth.xml erin erin-secret 3600
while [ $(($(date +%s) - dave)) -lt 9 ]; do sleep 0.2; done
sipp_run register_auth.xml carol carol-secret 3600
stop_capture

# -- an attacker ---------------------------------------------------------------------------
capture register_sipvicious_lo.pcap
sipp_run register_auth.xml alice alice-secret 3600
svwar -e1000-1059 -P "$(free_port 0.0.0.0)" -p "$KPORT" $REGISTRAR >"$WORK/svwar.log" 2>&1
grep -q 1001 "$WORK/svwar.log" || { echo "svwar found nothing" >&2; cat "$WORK/svwar.log" >&2; exit 1; }
sleep 6     # the challenges svwar never answers time out (sip-register-timeout is 5 s)
i=0
: >"$WORK/passwords"
while [ $i -lt 30 ]; do echo "guess$i" >>"$WORK/passwords"; i=$((i + 1)); done
echo letmein7 >>"$WORK/passwords"
svcrack -u 1001 -d "$WORK/passwords" -P "$(free_port 0.0.0.0)" -p "$KPORT" $REGISTRAR \
    >"$WORK/svcrack.log" 2>&1
grep -q letmein7 "$WORK/svcrack.log" || { echo "svcrack failed" >&2; cat "$WORK/svcrack.log" >&2; exit 1; }
sipp_run register_auth.xml alice alice-secret 3600
stop_capture

# -- a PBX ----------------------------------------------------------------------------------
capture sipmsg_kamailio_sipp_lo.pcap
sipp_run sipmsg_uac.xml bob
sipp_run sipmsg_options.xml slow
sipp_run sipmsg_options_silent.xml silent
sleep 2     # the last ping comes 6 s after the unanswered one
sipp_run sipmsg_options.xml trunk
stop_capture
echo "captures written to $OUT" >&2
