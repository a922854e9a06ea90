<#
.SYNOPSIS
    Registers two scheduled tasks that start at your logon: `ckpt-sync watch` on the training folder,
    and the power-event hook for the trainer (ckpt-sync-power-hook.ps1).

.DESCRIPTION
    Both run as you, in your session (the hook must reach the trainer's console), with no time limit,
    on battery too, and are restarted a minute after they fail. The watch reads its settings from a
    config file (repo, keep, bwlimit, ...: see deploy/README.md) and its key from -KeyFile; nothing
    secret is written into the task.

    Remove them with:
        Unregister-ScheduledTask -TaskName 'ckpt-sync watch', 'ckpt-sync power hook' -Confirm:$false

.EXAMPLE
    powershell -NoProfile -ExecutionPolicy Bypass -File install-tasks.ps1 `
        -CkptSync C:\ckpt-sync\Scripts\ckpt-sync.exe `
        -WatchDir C:\train\checkpoints\training `
        -Config C:\train\ckpt-sync.toml `
        -KeyFile $env:APPDATA\ckpt-sync\run42.key `
        -PidFile C:\train\logs\training.pid
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$CkptSync,
    [Parameter(Mandatory = $true)][string]$WatchDir,
    [Parameter(Mandatory = $true)][string]$Config,
    [Parameter(Mandatory = $true)][string]$KeyFile,
    [Parameter(Mandatory = $true)][string]$PidFile,
    [int]$BatteryPercent = 20
)

$ErrorActionPreference = 'Stop'
$me = [System.Security.Principal.WindowsIdentity]::GetCurrent().Name
$hook = Join-Path $PSScriptRoot 'ckpt-sync-power-hook.ps1'

$trigger = New-ScheduledTaskTrigger -AtLogOn -User $me
$principal = New-ScheduledTaskPrincipal -UserId $me -LogonType Interactive -RunLevel Limited
$settings = New-ScheduledTaskSettingsSet -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
    -ExecutionTimeLimit ([TimeSpan]::Zero) -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) `
    -StartWhenAvailable -MultipleInstances IgnoreNew

$watch = New-ScheduledTaskAction -Execute $CkptSync `
    -Argument "watch `"$WatchDir`" --config `"$Config`" --key-file `"$KeyFile`" --log-format json"
Register-ScheduledTask -TaskName 'ckpt-sync watch' -Description 'Uploads finished checkpoints (ckpt-sync watch)' `
    -Action $watch -Trigger $trigger -Principal $principal -Settings $settings -Force | Out-Null

$power = New-ScheduledTaskAction -Execute 'powershell.exe' `
    -Argument "-NoProfile -WindowStyle Hidden -ExecutionPolicy Bypass -File `"$hook`" -PidFile `"$PidFile`" -BatteryPercent $BatteryPercent"
Register-ScheduledTask -TaskName 'ckpt-sync power hook' `
    -Description 'Ctrl-Break to the trainer on a power event: an emergency checkpoint' `
    -Action $power -Trigger $trigger -Principal $principal -Settings $settings -Force | Out-Null

Start-ScheduledTask -TaskName 'ckpt-sync watch'
Start-ScheduledTask -TaskName 'ckpt-sync power hook'
Write-Host "registered and started: 'ckpt-sync watch' on $WatchDir, 'ckpt-sync power hook' for $PidFile"
