#!/bin/bash
# The README's restore session, run for real as root: it makes /home/ann and /mnt/usb.
# The five passes before it are dated by the test clock ONEWAY_TEST_NOW, which only a test
# build has: cargo build --bins --features sync-core/test-hook, then B=target/debug.
set -e
B=${B:?set B to the directory of a test build of oneway and twoway}
rm -rf /home/ann && mkdir -p /home/ann/Documents/letters /mnt/usb/Documents /home/ann/twoway-state
rm -rf /mnt/usb/Documents/* /mnt/usb/Documents/.[!.]* 2>/dev/null || true
export HOME=/home/ann TZ=UTC XDG_STATE_HOME=/home/ann/.local/state XDG_CACHE_HOME=/home/ann/.cache
D=/home/ann/Documents
echo "Dear Ann," > $D/letters/ann.txt; echo "budget 2026" > $D/budget.ods; echo "notes" > $D/notes.txt
cd /home/ann/twoway-state
run(){ ONEWAY_TEST_NOW=$1 $B/twoway ~/Documents /mnt/usb/Documents --once -l /tmp/demo-tw.log >/dev/null 2>&1; }
run 1796558400; echo "more" >> $D/notes.txt; run 1796580000
echo "Dear Bob," > $D/letters/bob.txt; run 1796626800
echo "budget v2" > $D/budget.ods; run 1796630400
echo "even more" >> $D/notes.txt; run 1796634000
p(){ echo "\$ $*" | sed "s#$B/##"; }
p twoway '~/Documents' --versions; $B/twoway ~/Documents --versions
p twoway '~/Documents' --restore --version 2026-12-07_07-00-00 --path budget.ods
$B/twoway ~/Documents --restore --version 2026-12-07_07-00-00 --path budget.ods 2>&1
p twoway '~/Documents' --restore --version '"2026-12-06 18:00"' --target '~/Documents-yesterday'
$B/twoway ~/Documents --restore --version "2026-12-06 18:00" --target ~/Documents-yesterday 2>&1
K=$(ls __versions__/Documents | grep before-path-restore | head -1)
p twoway '~/Documents' --restore --version $K --path budget.ods
$B/twoway ~/Documents --restore --version $K --path budget.ods 2>&1
