#!/usr/bin/env bash
# Poll the Table 3 runs for up to $1 seconds (or until the command ends), then pack records and logs into $OUT.
set -u
cd /tmp/proj
end=$((SECONDS+${1:-300}))
while [ $SECONDS -lt $end ]; do
  n=$(find results/table3 -name record.json -newer /tmp/t3.start 2>/dev/null | wc -l)
  echo "$(date -u +%T) new records=$n gpu=$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader | tr -d ' ') load=$(cut -d' ' -f1 /proc/loadavg)"
  for f in $(find .dvc/tmp/exps/run -name '*.out' 2>/dev/null | head -16); do echo "   ${f##*/}: $(tail -c 600 $f | tr '\r' '\n' | grep -a -v '^ *$' | tail -n 1 | cut -c1-120)"; done
  pgrep -f "palbert.cli table3" >/dev/null || { echo "table3 command ended"; break; }
  sleep 30
done
tail -n 30 /tmp/t3.log
tar czf $OUT/records.tgz results/table3/full /tmp/t3.log /tmp/t3.start $(find .dvc/tmp/exps -name '*.out' 2>/dev/null) 2>/dev/null
ls -la $OUT
