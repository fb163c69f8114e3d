# Sourced by up.sh (and run by tests/unit/test_deploy_files.py): the services of `make up`, the
# port each listens on, and the URLs of the other services each one is given.
#
#   services    the services, in start order
#   port[svc]   service i listens on 8000 + i (the gateway on 8000)
#   url[svc]    http://127.0.0.1:<port>
#   service_urls SVC   export the FUGOU_<SERVICE>_URL variables SVC gets, unset the others: the
#                      gateway, the front door, forwards every other service's routes to it;
#                      coupons and notifications call segmentation's audience API.

services=(gateway segmentation coupons loyalty notifications)
declare -A port url
for i in "${!services[@]}"; do
  port[${services[$i]}]=$((8000 + i))
  url[${services[$i]}]="http://127.0.0.1:$((8000 + i))"
done

service_urls() {
  local other
  for other in "${services[@]}"; do
    [[ "$other" == gateway ]] || unset "FUGOU_${other^^}_URL"
  done
  case "$1" in
    gateway)
      for other in "${services[@]}"; do
        [[ "$other" == gateway ]] || export "FUGOU_${other^^}_URL=${url[$other]}"
      done ;;
    coupons | notifications) export FUGOU_SEGMENTATION_URL="${url[segmentation]}" ;;
  esac
}
